//! hyper's IO traits over glommio's `TcpStream`.
//!
//! `ReadBufCursor` can be filled without `unsafe` only through `put_slice`, so reads go
//! through a small scratch buffer and are copied once into hyper's buffer; the copy is
//! the price of `#![forbid(unsafe_code)]` (at most 16 KiB a read).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

const SCRATCH: usize = 16 * 1024;

pub(crate) struct Io {
    stream: TcpStream,
    scratch: Box<[u8]>,
}

impl Io {
    pub fn new(stream: TcpStream) -> Io {
        Io {
            stream,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
        }
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut this.scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&this.scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}
