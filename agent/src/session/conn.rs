//! A connection that is plain TCP, a Unix socket, or TLS on either hop, and its split into boxed halves.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The read half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// The write half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// One hop's stream.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// A Unix socket (TLS does not apply: PostgreSQL refuses it there too).
    Unix(UnixStream),
    /// TLS pgwarden terminated for a client.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS pgwarden started toward the server.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Whether the hop is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_) | Self::Unix(_))
    }

    /// The certificate (DER) the server presented on TLS pgwarden started toward it.
    pub fn server_certificate(&self) -> Option<&[u8]> {
        match self {
            Self::ClientTls(s) => s
                .get_ref()
                .1
                .peer_certificates()?
                .first()
                .map(AsRef::as_ref),
            _ => None,
        }
    }

    /// Splits into independently usable halves.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Self::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Self::ServerTls(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
            Self::ClientTls(s) => {
                let (r, w) = tokio::io::split(s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
            Self::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
            Self::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::ServerTls(s) => Pin::new(s).poll_flush(cx),
            Self::ClientTls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
            Self::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Batches of more frames than this whose average size is under [`SMALL_FRAME`] are joined into
/// one buffer before writing: a memcpy of a few kilobytes costs less than the system calls a
/// vectored write of many tiny slices takes (a result set read 64 KiB at a time holds
/// hundreds of rows).
const JOIN_OVER: usize = 8;
/// Frames at least this large on average are written where they are (zero-copy).
const SMALL_FRAME: usize = 2048;
/// Slices per vectored write: on the stack (no allocation per batch), and at least
/// [`SMALL_FRAME`] bytes each on average, so a write of a full set moves 128 KiB or more.
const IOV_SLICES: usize = 64;

/// Writes every buffer of `batch`, in order, with as few syscalls as the writer allows, then
/// flushes (TLS needs it) and clears the batch. Large frames go out as they were read (no
/// copy on a plain hop); many small ones are joined first.
pub async fn write_batch<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    batch: &mut Vec<bytes::Bytes>,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    if batch.is_empty() {
        return Ok(());
    }
    let total: usize = batch.iter().map(bytes::Bytes::len).sum();
    let join = batch.len() > JOIN_OVER && total / batch.len() < SMALL_FRAME;
    if batch.len() == 1 {
        w.write_all(&batch[0]).await?;
    } else if join || !w.is_write_vectored() {
        let mut joined = bytes::BytesMut::with_capacity(total);
        for b in batch.iter() {
            joined.extend_from_slice(b);
        }
        w.write_all(&joined).await?;
    } else {
        let mut index = 0;
        let mut offset = 0;
        while index < batch.len() {
            let mut slices = [io::IoSlice::new(&[]); IOV_SLICES];
            let mut count = 0;
            for (slot, (i, b)) in slices.iter_mut().zip(batch[index..].iter().enumerate()) {
                *slot = io::IoSlice::new(if i == 0 { &b[offset..] } else { &b[..] });
                count += 1;
            }
            let mut n = w.write_vectored(&slices[..count]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            while n > 0 && index < batch.len() {
                let left = batch[index].len() - offset;
                if n >= left {
                    n -= left;
                    index += 1;
                    offset = 0;
                } else {
                    offset += n;
                    n = 0;
                }
            }
        }
    }
    w.flush().await?;
    batch.clear();
    Ok(())
}
