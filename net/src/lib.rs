//! `cairn-net`: Cairn's networking without the IO.
//!
//! - [`rpc`]: the binary RPC protocol's frames and messages (built; the client and server
//!   IO arrive with issue 3).
//! - [`gossip`]: the sans-IO SWIM/Lifeguard gossip engine (membership and failure
//!   detection), its wire format, profiles and a seeded simulator of many nodes on
//!   virtual time (issue 4; the UDP driver arrives separately).
#![forbid(unsafe_code)]

pub mod gossip;
pub mod rpc;
