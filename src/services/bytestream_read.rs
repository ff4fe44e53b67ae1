//! ByteStream Read without a copy of the blob on the server. tonic's encoder copies every message
//! into its own buffer before hyper sends it (7% of the machine in read-large of 16 MiB blobs), so
//! this route answers Read itself: each piece of the blob leaves as the `Bytes` the storage handed
//! out (a slice of a mapping or of the memory tier's buffer) behind a message head of a few bytes,
//! and h2 writes it from there. The request, the checks and the answer are those of
//! `ByteStreamService::read`; Write and QueryWriteStatus go on to the generated server.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::Frame;
use strata_backends::bytestream::byte_stream_server::ByteStream;
use strata_backends::bytestream::{ReadRequest, ReadResponse};
use tonic::body::Body;
use tonic::Status;

use super::bytestream::ByteStreamService;
use super::raw_route::{self, frame_head, trailers, Handler};

pub const READ_PATH: &str = "/google.bytestream.ByteStream/Read";
/// `ReadResponse.data`.
const DATA_FIELD: u32 = 10;

/// Answers ByteStream Read calls with `service`, its data sent as stored.
pub fn read_handler(service: Arc<ByteStreamService>, max_request: usize) -> Handler {
    let read = move |request| {
        let service = service.clone();
        async move { service.read(request).await.map(tonic::Response::into_inner) }
    };
    raw_route::handler::<ReadRequest, _, _, _>(max_request, "ReadRequest", read, streamed)
}

/// The gRPC response of a stream of ReadResponses: each one a message head and its data as they
/// are, then the status as trailers (OK, or the error that ended the stream).
fn streamed(responses: super::bytestream::ReadStream) -> http::Response<Body> {
    let frames = responses
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(false, |ended, item| {
            let frames: Vec<Result<Frame<Bytes>, Status>> = match (*ended, item) {
                (true, _) => return futures::future::ready(None),
                (false, Some(Ok(response))) => {
                    let (head, data) = message_head(response);
                    [Some(head), (!data.is_empty()).then_some(data)].into_iter().flatten().map(|b| Ok(Frame::data(b))).collect()
                }
                (false, Some(Err(status))) => {
                    *ended = true;
                    vec![Ok(Frame::trailers(trailers(&status)))]
                }
                (false, None) => vec![Ok(Frame::trailers(trailers(&Status::ok(""))))],
            };
            futures::future::ready(Some(futures::stream::iter(frames)))
        })
        .flatten();
    raw_route::response(frames)
}

/// A ReadResponse as the gRPC frame head and protobuf field head that precede its data, and the
/// data. An empty ReadResponse is an empty message.
fn message_head(response: ReadResponse) -> (Bytes, Bytes) {
    let data = response.data;
    let mut field = BytesMut::with_capacity(11);
    if !data.is_empty() {
        prost::encoding::encode_key(DATA_FIELD, prost::encoding::WireType::LengthDelimited, &mut field);
        prost::encoding::encode_varint(data.len() as u64, &mut field);
    }
    let mut head = BytesMut::with_capacity(5 + field.len());
    head.extend_from_slice(&frame_head(field.len() + data.len()));
    head.extend_from_slice(&field);
    (head.freeze(), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The head and the data together are the message tonic would have sent.
    #[test]
    fn a_message_head_and_its_data_are_the_encoded_response() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 1 << 20] {
            let data = Bytes::from(vec![7u8; len]);
            let (head, sent) = message_head(ReadResponse { data: data.clone() });
            assert_eq!(sent.as_ptr(), data.as_ptr(), "the data is not copied");
            let encoded = ReadResponse { data }.encode_to_vec();
            let mut expected = vec![0u8];
            expected.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            expected.extend_from_slice(&encoded);
            assert_eq!([&head[..], &sent[..]].concat(), expected, "{len} bytes");
        }
    }
}
