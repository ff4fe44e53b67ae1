//! The messages of a gRPC request body, each kept as the pieces of the body it arrived in. h2 hands
//! over each DATA frame as a slice of its receive buffer; tonic's decoder copies those into a
//! buffer of its own before decoding, which for ByteStream Write is a copy of every uploaded byte.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

/// Bytes held as the pieces they came in, read from the front.
#[derive(Default, Debug)]
pub struct Pieces {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// The first `n` bytes (or all there are), taken off the front without a copy.
    pub fn split_to(&mut self, n: usize) -> Pieces {
        let mut taken = Pieces::default();
        while taken.len < n {
            let Some(mut front) = self.pieces.pop_front() else { break };
            let wanted = n - taken.len;
            if front.len() > wanted {
                self.pieces.push_front(front.split_off(wanted));
            }
            self.len -= front.len();
            taken.push(front);
        }
        taken
    }

    pub fn into_vec(self) -> Vec<Bytes> {
        self.pieces.into()
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |piece| &piece[..])
    }

    // prost advances over every key and varint it reads: this takes nothing apart it can step over.
    fn advance(&mut self, mut count: usize) {
        while count > 0 {
            let Some(front) = self.pieces.front_mut() else { return };
            let step = count.min(front.len());
            front.advance(step);
            self.len -= step;
            count -= step;
            if front.is_empty() {
                self.pieces.pop_front();
            }
        }
    }

    /// Without a copy when the bytes lie in one piece (prost reads `Bytes` fields this way).
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self.pieces.front_mut() {
            Some(front) if front.len() >= len => {
                self.len -= len;
                let taken = front.split_to(len);
                if front.is_empty() {
                    self.pieces.pop_front();
                }
                taken
            }
            _ => {
                let taken = self.split_to(len).into_vec();
                match <[Bytes; 1]>::try_from(taken) {
                    Ok([one]) => one,
                    Err(taken) => Bytes::from(taken.concat()),
                }
            }
        }
    }
}

/// Frames shorter than this are copied together rather than kept each as a piece. A piece costs a
/// queue slot and holds its frame's buffer, so a client sending frames of a byte would otherwise
/// make the server hold many times what it sent.
const SMALL_FRAME: usize = 8 * 1024;

/// The request messages of one call, read from its body as they arrive.
pub struct RequestMessages {
    body: Body,
    received: Pieces,
    /// Small frames since the last piece, copied together (see `SMALL_FRAME`).
    small: BytesMut,
    max_message: usize,
    /// The message's name, for errors.
    name: &'static str,
}

impl RequestMessages {
    /// The messages of `body`, checked as tonic checks them: uncompressed (the `grpc-encoding` of
    /// `headers`, and each message's flag) and within `max_message` bytes.
    pub fn new(headers: &http::HeaderMap, body: Body, max_message: usize, name: &'static str) -> Result<Self, Status> {
        if let Some(encoding) = headers.get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
            let encoding = String::from_utf8_lossy(encoding.as_bytes());
            return Err(Status::unimplemented(format!("the request is compressed with {encoding}, which this server does not accept")));
        }
        Ok(RequestMessages { body, received: Pieces::default(), small: BytesMut::new(), max_message, name })
    }

    /// The next message, or `None` where the body ends between two messages.
    pub async fn next(&mut self) -> Result<Option<Pieces>, Status> {
        let name = self.name;
        if !self.fill(5).await? {
            return match self.received.remaining() {
                0 => Ok(None),
                held => Err(Status::invalid_argument(format!("the call ended inside the head of a {name}: {held} of 5 bytes"))),
            };
        }
        let compressed = self.received.get_u8();
        let len = self.received.get_u32() as usize;
        if compressed != 0 {
            return Err(Status::unimplemented(format!("the {name} is compressed, which this server does not accept")));
        }
        if len > self.max_message {
            return Err(Status::resource_exhausted(format!("the {name} of {len} bytes exceeds the limit of {} bytes; split it into smaller requests", self.max_message)));
        }
        if !self.fill(len).await? {
            return Err(Status::invalid_argument(format!("the {name} is cut short: {} of {len} bytes", self.received.remaining())));
        }
        Ok(Some(self.received.split_to(len)))
    }

    /// Reads the body until `n` bytes are held; false if it ended first.
    async fn fill(&mut self, n: usize) -> Result<bool, Status> {
        let mut ended = false;
        while self.received.remaining() + self.small.len() < n {
            match self.body.frame().await {
                None => {
                    ended = true;
                    break;
                }
                // A request's trailers carry nothing a server reads.
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() < SMALL_FRAME => {
                        self.small.extend_from_slice(&data);
                        if self.small.len() >= SMALL_FRAME {
                            self.received.push(self.small.split().freeze());
                        }
                    }
                    Ok(data) => {
                        self.received.push(self.small.split().freeze());
                        self.received.push(data);
                    }
                    Err(_) => {}
                },
                Some(Err(e)) => return Err(Status::cancelled(format!("the request did not arrive whole: {e}"))),
            }
        }
        self.received.push(self.small.split().freeze());
        Ok(!ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    fn pieces(parts: &[&[u8]]) -> Pieces {
        let mut pieces = Pieces::default();
        for part in parts {
            pieces.push(Bytes::copy_from_slice(part));
        }
        pieces
    }

    #[test]
    fn splitting_slices_pieces_without_a_copy_and_keeps_the_rest() {
        let first = Bytes::from_static(b"abcdef");
        let mut held = Pieces::default();
        held.push(first.clone());
        held.push(Bytes::new());
        held.push(Bytes::from_static(b"gh"));
        let taken = held.split_to(4);
        assert_eq!(taken.remaining(), 4);
        assert_eq!(taken.pieces[0].as_ptr(), first.as_ptr(), "a slice of the piece, not a copy");
        assert_eq!(held.remaining(), 4);
        assert_eq!(held.into_vec().concat(), b"efgh");
        let mut short = pieces(&[b"ab"]);
        assert_eq!(short.split_to(10).into_vec().concat(), b"ab", "all there is");
        assert_eq!(short.remaining(), 0);
    }

    #[test]
    fn read_as_a_buf_across_pieces() {
        let mut held = pieces(&[b"\x00\x01", b"\x02", b"\x03\x04xyz"]);
        assert_eq!(held.get_u32(), 0x0001_0203);
        assert_eq!(held.copy_to_bytes(2), Bytes::from_static(b"\x04x"), "across two pieces");
        let piece = held.chunk().as_ptr();
        assert_eq!(held.copy_to_bytes(2).as_ptr(), piece, "within one piece: no copy");
        assert_eq!(held.remaining(), 0);
        let mut held = pieces(&[b"abc", b"de", b"fgh"]);
        held.advance(4);
        assert_eq!((held.remaining(), held.chunk()), (4, &b"e"[..]));
        assert_eq!(held.copy_to_bytes(1), Bytes::from_static(b"e"), "a whole piece");
        assert_eq!(held.chunk(), b"fgh");
        held.advance(3);
        assert_eq!((held.remaining(), held.chunk()), (0, &b""[..]));
    }

    fn body(frames: Vec<Result<Frame<Bytes>, Status>>) -> Body {
        Body::new(StreamBody::new(futures::stream::iter(frames)))
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        framed
    }

    /// Two messages whose heads and bodies are cut across frames at every byte.
    #[tokio::test]
    async fn messages_are_found_across_any_split_of_the_frames() {
        let mut stream = framed(b"first message");
        stream.extend(framed(b""));
        stream.extend(framed(b"third"));
        for cut in 0..stream.len() {
            let frames = vec![Ok(Frame::data(Bytes::copy_from_slice(&stream[..cut]))), Ok(Frame::data(Bytes::copy_from_slice(&stream[cut..])))];
            let mut messages = RequestMessages::new(&http::HeaderMap::new(), body(frames), 100, "Test").unwrap();
            let mut got = Vec::new();
            while let Some(message) = messages.next().await.unwrap() {
                got.push(message.into_vec().concat());
            }
            assert_eq!(got, [&b"first message"[..], b"", b"third"], "cut at {cut}");
        }
    }

    /// A message sent a byte per frame is held in pieces of SMALL_FRAME, not a piece per byte.
    #[tokio::test]
    async fn tiny_frames_are_held_together() {
        let message = vec![9u8; 100_000];
        let frames: Vec<_> = framed(&message).into_iter().map(|byte| Ok(Frame::data(Bytes::copy_from_slice(&[byte])))).collect();
        let mut messages = RequestMessages::new(&http::HeaderMap::new(), body(frames), 1 << 20, "Test").unwrap();
        let got = messages.next().await.unwrap().unwrap();
        assert!(got.pieces.len() <= 100_000 / SMALL_FRAME + 2, "{} pieces", got.pieces.len());
        assert_eq!(got.into_vec().concat(), message);
        // A large frame after small ones keeps its place and is not copied.
        let large = Bytes::from(vec![2u8; SMALL_FRAME * 2]);
        let mut stream = framed(&[&[1u8; 3][..], &large[..]].concat());
        stream.truncate(8);
        let frames = vec![Ok(Frame::data(Bytes::from(stream))), Ok(Frame::data(large.clone()))];
        let mut messages = RequestMessages::new(&http::HeaderMap::new(), body(frames), 1 << 20, "Test").unwrap();
        let got = messages.next().await.unwrap().unwrap();
        assert_eq!(got.pieces.back().map(|p| p.as_ptr()), Some(large.as_ptr()));
        assert_eq!(got.into_vec().concat(), [&[1u8; 3][..], &large[..]].concat());
    }

    async fn first_error(stream: Vec<u8>, max: usize) -> Status {
        let frames = vec![Ok(Frame::data(Bytes::from(stream)))];
        let mut messages = RequestMessages::new(&http::HeaderMap::new(), body(frames), max, "Test").unwrap();
        loop {
            match messages.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(status) => return status,
            }
        }
    }

    #[tokio::test]
    async fn bad_streams_are_refused_with_what_is_wrong() {
        let cut = first_error(framed(b"0123456789")[..9].to_vec(), 100).await;
        assert_eq!(cut.code(), tonic::Code::InvalidArgument);
        assert!(cut.message().contains("cut short: 4 of 10 bytes"), "{}", cut.message());
        let head = first_error(vec![0, 0, 0], 100).await;
        assert_eq!(head.code(), tonic::Code::InvalidArgument);
        assert!(head.message().contains("3 of 5 bytes"), "{}", head.message());
        let large = first_error(framed(&[7u8; 101]), 100).await;
        assert_eq!(large.code(), tonic::Code::ResourceExhausted);
        assert!(large.message().contains("101 bytes exceeds the limit of 100"), "{}", large.message());
        let mut flagged = framed(b"x");
        flagged[0] = 1;
        assert_eq!(first_error(flagged, 100).await.code(), tonic::Code::Unimplemented);
        let broken = vec![Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 9, 1]))), Err(Status::internal("reset"))];
        let mut messages = RequestMessages::new(&http::HeaderMap::new(), body(broken), 100, "Test").unwrap();
        assert_eq!(messages.next().await.unwrap_err().code(), tonic::Code::Cancelled);
        let mut gzip = http::HeaderMap::new();
        gzip.insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
        let refused = RequestMessages::new(&gzip, body(Vec::new()), 100, "Test").err().map(|s| s.code());
        assert_eq!(refused, Some(tonic::Code::Unimplemented));
    }
}
