//! Cairn's binary RPC protocol: frames ([`frame`]) carrying requests and responses
//! ([`message`]). Pure codecs ([`client`] is the sans-IO client side of one connection)
//! that the server and clients drive from their own IO; [`cluster`] is a blocking client
//! for a set of servers (failover, leader hints, safe retries) over std sockets.

pub mod catalog;
pub mod client;
pub mod cluster;
pub mod frame;
pub mod message;
