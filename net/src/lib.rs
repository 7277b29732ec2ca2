//! `cairn-net`: Cairn's networking without the IO.
//!
//! This crate will hold the binary RPC wire format and its client (issue 3) and the sans-IO
//! SWIM/Lifeguard gossip engine with its simulator (issue 4). Nothing lives here yet: the
//! crate exists so the workspace has the shape the design card fixes.
#![forbid(unsafe_code)]
