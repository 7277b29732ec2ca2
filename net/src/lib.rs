//! `cairn-net`: Cairn's networking without the IO.
//!
//! - [`rpc`]: the binary RPC protocol's frames and messages (built; the client and server
//!   IO arrive with issue 3).
//! - The sans-IO SWIM/Lifeguard gossip engine and its simulator arrive with issue 4.
#![forbid(unsafe_code)]

pub mod rpc;
