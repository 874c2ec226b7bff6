//! The read side of permessage-deflate, under the WebSocket layer.
//!
//! [`Inflating`] sits between the upgraded connection and tungstenite,
//! which refuses frames with RSV1 set. It reads the client's frames; a
//! message whose first frame has RSV1 set (compressed) is gathered,
//! inflated and handed on as one plain frame. Every other frame passes
//! through unchanged. Writes pass straight through.
//!
//! An inflated message larger than the frame limit is not inflated past
//! it: tungstenite gets a header announcing one byte more than the limit,
//! which it refuses as too big (close 1009), exactly as it refuses a plain
//! frame that size.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The four bytes RFC 7692 has the sender strip from each message's end.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// What a read from the connection asks for at least.
const READ_CHUNK: usize = 1024;

thread_local! {
    /// Without client context takeover every message inflates from a fresh
    /// state: one decompressor per worker thread serves every connection,
    /// so an idle connection holds none.
    static FRESH: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A connection whose compressed client messages arrive inflated.
#[derive(Debug)]
pub(super) struct Inflating<S> {
    inner: S,
    /// Bytes read from the connection, not yet looked at.
    raw: BytesMut,
    /// Frames ready for the WebSocket layer.
    out: BytesMut,
    /// A compressed message whose last frame has not arrived: its opcode
    /// and its compressed bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    /// The largest message, inflated.
    max: usize,
    /// With client context takeover, this connection's own decompressor
    /// (its window carries over from one message to the next).
    kept: Option<Box<Decompress>>,
    /// A frame was too big: the rest passes through for the WebSocket
    /// layer to refuse.
    passthrough: bool,
}

impl<S> Inflating<S> {
    pub(super) fn new(inner: S, max: usize, client_takeover: bool) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            partial: None,
            max,
            kept: client_takeover.then(|| Box::new(Decompress::new(false))),
            passthrough: false,
        }
    }

    /// Turns as many whole frames of `raw` as there are into `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.passthrough {
                let rest = self.raw.split();
                self.out.unsplit(rest);
                return Ok(());
            }
            let Some(header) = Header::parse(&self.raw) else { return Ok(()) };
            if header.len > self.max as u64 {
                // The WebSocket layer refuses it from its header alone.
                self.passthrough = true;
                continue;
            }
            let total = header.size + header.len as usize;
            if self.raw.len() < total {
                self.raw.reserve(total - self.raw.len());
                return Ok(());
            }
            let frame = self.raw.split_to(total);
            let control = header.opcode & 0x08 != 0;
            match (&mut self.partial, header.opcode) {
                // A control frame, or a plain message's frame.
                _ if control => self.out.extend_from_slice(&frame),
                (None, 0x1 | 0x2) if header.rsv1 => {
                    let payload = header.unmasked(&frame);
                    if header.fin {
                        self.inflated(header.opcode, payload)?;
                    } else {
                        self.partial = Some((header.opcode, payload));
                    }
                }
                (Some((opcode, gathered)), 0x0) => {
                    if header.rsv1 {
                        return Err(invalid("RSV1 set on a continuation frame"));
                    }
                    gathered.extend_from_slice(&header.unmasked(&frame));
                    if gathered.len() > self.max {
                        return Err(invalid("compressed message larger than the frame limit"));
                    }
                    if header.fin {
                        let opcode = *opcode;
                        let gathered = std::mem::take(gathered);
                        self.partial = None;
                        self.inflated(opcode, gathered)?;
                    }
                }
                // Plain frames, and frames out of order, which the WebSocket
                // layer refuses as it would without compression.
                _ => self.out.extend_from_slice(&frame),
            }
        }
    }

    /// Inflates one whole message and queues it as one plain, final frame.
    fn inflated(&mut self, opcode: u8, mut compressed: Vec<u8>) -> io::Result<()> {
        compressed.extend_from_slice(&TAIL);
        let limit = self.max;
        let message = match self.kept.as_deref_mut() {
            Some(kept) => inflate(kept, &compressed, limit),
            None => FRESH.with(|fresh| {
                let mut fresh = fresh.borrow_mut();
                fresh.reset(false);
                inflate(&mut fresh, &compressed, limit)
            }),
        }?;
        match message {
            Some(message) => frame(&mut self.out, opcode, message.len() as u64, &message),
            // Past the limit: a header announcing one byte too many.
            None => {
                frame(&mut self.out, opcode, limit as u64 + 1, &[]);
                self.passthrough = true;
            }
        }
        Ok(())
    }
}

/// `input` inflated; `None` once it passes `limit` bytes (it is not
/// inflated further).
fn inflate(state: &mut Decompress, input: &[u8], limit: usize) -> io::Result<Option<Vec<u8>>> {
    let mut output = Vec::with_capacity((input.len() * 4).min(limit + 1));
    let start = state.total_in();
    loop {
        if output.len() == output.capacity() {
            // Room to grow, never past one byte over the limit.
            let more = (limit + 1 - output.len()).min(output.len().max(256));
            output.reserve_exact(more);
        }
        let (before_in, before_out) = (state.total_in(), output.len());
        let consumed = (before_in - start) as usize;
        let status = state
            .decompress_vec(&input[consumed..], &mut output, FlushDecompress::Sync)
            .map_err(|e| invalid(&format!("bad compressed message: {e}")))?;
        if output.len() > limit {
            return Ok(None);
        }
        let all_in = (state.total_in() - start) as usize == input.len();
        let room_left = output.len() < output.capacity();
        if status == Status::StreamEnd || (all_in && room_left) {
            return Ok(Some(output));
        }
        let progress = state.total_in() != before_in || output.len() != before_out;
        if !progress && room_left {
            return Err(invalid("truncated compressed message"));
        }
    }
}

/// Appends a final, masked (with a zero key: the payload reads as is)
/// frame with `opcode` and a header announcing `len` bytes, then `payload`.
fn frame(out: &mut BytesMut, opcode: u8, len: u64, payload: &[u8]) {
    out.extend_from_slice(&[0x80 | opcode]);
    match len {
        0..=125 => out.extend_from_slice(&[0x80 | len as u8]),
        126..=0xffff => {
            out.extend_from_slice(&[0x80 | 126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[0x80 | 127]);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// A client frame's header.
#[derive(Debug)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Payload length.
    len: u64,
    /// Header length.
    size: usize,
}

impl Header {
    /// The header at the front of `raw`, once all of it is there.
    fn parse(raw: &[u8]) -> Option<Self> {
        let [first, second, ..] = *raw else { return None };
        let masked = second & 0x80 != 0;
        let (len, mut size) = match second & 0x7f {
            126 => (u64::from(u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?)), 4),
            127 => (u64::from_be_bytes(raw.get(2..10)?.try_into().ok()?), 10),
            short => (u64::from(short), 2),
        };
        let mask = if masked {
            let key = raw.get(size..size + 4)?.try_into().ok()?;
            size += 4;
            Some(key)
        } else {
            None
        };
        Some(Self {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            opcode: first & 0x0f,
            mask,
            len,
            size,
        })
    }

    /// The payload of `frame` (header included), unmasked.
    fn unmasked(&self, frame: &[u8]) -> Vec<u8> {
        let mut payload = frame[self.size..].to_vec();
        if let Some(key) = self.mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= key[i % 4];
            }
        }
        payload
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                if this.out.is_empty() && this.out.capacity() > 4 * READ_CHUNK {
                    // A large message went through: an idle socket keeps
                    // no room for the next.
                    this.out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            this.raw.reserve(READ_CHUNK);
            let n = {
                let spare = this.raw.spare_capacity_mut();
                let mut read = ReadBuf::uninit(spare);
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                read.filled().len()
            };
            if n == 0 {
                // The connection ended: what is left goes up as it is, for
                // the WebSocket layer to see the cut.
                let rest = this.raw.split();
                this.out.unsplit(rest);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // SAFETY: `poll_read` initialised the first `n` spare bytes.
            unsafe { this.raw.set_len(this.raw.len() + n) };
            this.process()?;
            if this.raw.is_empty() && this.raw.capacity() > 4 * READ_CHUNK {
                this.raw = BytesMut::new();
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
