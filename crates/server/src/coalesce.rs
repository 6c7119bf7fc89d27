//! [`CoalescingIo`]: the gRPC port's connections, presented to HTTP/2 as
//! streams without vectored writes, so small answers are written together.
//!
//! h2 keeps a DATA frame of 256 bytes or more out of its write buffer when
//! the stream can write vectored (as a TCP stream can), and writes nothing
//! more into that buffer until the frame is sent: every answer of 256
//! bytes or more costs its own `writev`, and its trailers another, where
//! smaller answers of many concurrent calls share one. On loopback each
//! write also wakes the reader, on the writer's CPU. An ext_authz Check
//! answer with identity and rate-limit headers is about that size (252
//! bytes with a ten-digit limit), and an Authorize answer with a few scopes
//! or metadata is too: under 32 concurrent calls such answers cost 1.2
//! writes per call instead of 0.6. Without vectored writes, h2 copies
//! payloads under 1 KiB into its buffer (`CHAIN_THRESHOLD_WITHOUT_VECTORED_IO`
//! in h2's `framed_write.rs`) and writes them with the rest; larger ones are
//! sent as before. TLS connections are wrapped by tonic around this stream,
//! so what h2 sees there is the TLS stream.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose writes are never vectored (see the module doc).
#[derive(Debug)]
pub(crate) struct CoalescingIo<T>(pub T);

impl<T: AsyncRead + Unpin> AsyncRead for CoalescingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for CoalescingIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn passes_bytes_both_ways_and_claims_no_vectored_writes() {
        let (a, b) = tokio::io::duplex(64);
        let (mut a, mut b) = (CoalescingIo(a), CoalescingIo(b));
        assert!(!a.is_write_vectored());
        a.write_all(b"ping").await.expect("write");
        a.flush().await.expect("flush");
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        b.shutdown().await.expect("shutdown");
        assert_eq!(a.read(&mut got).await.expect("eof"), 0);
    }
}
