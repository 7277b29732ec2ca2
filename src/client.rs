//! A blocking RPC client over one TCP connection, for the CLI and tests. It drives the
//! sans-IO [`cairn_net::rpc::client::ClientConn`] with a std socket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use cairn_net::rpc::client::{CallError, ClientConn};
use cairn_net::rpc::frame::FrameDecoder;
use cairn_net::rpc::message::{Limits, Request, Response};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source} (is an agent running there? start one with `cairn agent --dev`)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connection to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Call(#[from] CallError),
}

pub struct RpcClient {
    addr: String,
    stream: TcpStream,
    conn: ClientConn,
    timeout: Duration,
}

impl RpcClient {
    /// Connects to `addr` (host:port); every call waits at most `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> Result<RpcClient, ClientError> {
        let err = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let sock: SocketAddr = addr
            .to_socket_addrs()
            .map_err(err)?
            .next()
            .ok_or_else(|| err(std::io::Error::other("no address")))?;
        let stream = TcpStream::connect_timeout(&sock, timeout).map_err(err)?;
        let _ = stream.set_nodelay(true);
        Ok(RpcClient {
            addr: addr.to_string(),
            stream,
            conn: ClientConn::new(64, Limits::default(), FrameDecoder::for_responses()),
            timeout,
        })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let id = self.conn.send(req, deadline)?;
        let out = self.conn.take_outgoing();
        self.stream.write_all(&out).map_err(|e| self.io(e))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for done in self.conn.expire(Instant::now()) {
                    if done.id == id {
                        return Ok(done.result?);
                    }
                }
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .map_err(|e| self.io(e))?;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    for done in self.conn.closed("the agent closed the connection") {
                        if done.id == id {
                            return Ok(done.result?);
                        }
                    }
                    return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(e) => return Err(self.io(e)),
            };
            for done in self.conn.receive(&buf[..n]) {
                if done.id == id {
                    return Ok(done.result?);
                }
            }
        }
    }
}
