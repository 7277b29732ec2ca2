//! Cairn's binary RPC protocol: frames ([`frame`]) carrying requests and responses
//! ([`message`]). Pure codecs: the server and the client drive them from their own IO.

pub mod client;
pub mod frame;
pub mod message;
