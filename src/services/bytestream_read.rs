//! ByteStream Read without a copy of the blob on the server. tonic's encoder copies every message
//! into its own buffer before hyper sends it (7% of the machine in read-large of 16 MiB blobs), so
//! this route answers Read itself: each piece of the blob leaves as the `Bytes` the storage handed
//! out (a slice of a mapping or of the memory tier's buffer) behind a message head of a few bytes,
//! and h2 writes it from there. The request, the checks and the answer are those of
//! `ByteStreamService::read`; Write and QueryWriteStatus go on to the generated server.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::{BodyExt, Limited, StreamBody};
use prost::Message;
use strata_backends::bytestream::byte_stream_server::ByteStream;
use strata_backends::bytestream::{ReadRequest, ReadResponse};
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::bytestream::ByteStreamService;

const READ_PATH: &str = "/google.bytestream.ByteStream/Read";
/// `ReadResponse.data`.
const DATA_FIELD: u32 = 10;

/// The ByteStream service: Read served here, the other methods by `inner` (the generated server).
#[derive(Clone)]
pub struct ZeroCopyRead<S> {
    service: Arc<ByteStreamService>,
    inner: S,
    max_request: usize,
}

impl<S> ZeroCopyRead<S> {
    pub fn new(service: Arc<ByteStreamService>, inner: S, max_request: usize) -> Self {
        ZeroCopyRead { service, inner, max_request }
    }
}

impl<S> NamedService for ZeroCopyRead<S> {
    const NAME: &'static str = "google.bytestream.ByteStream";
}

impl<S> tower_service::Service<http::Request<Body>> for ZeroCopyRead<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != READ_PATH {
            let mut inner = self.inner.clone();
            return Box::pin(async move { inner.call(request).await });
        }
        let (service, max_request) = (self.service.clone(), self.max_request);
        Box::pin(async move {
            let answer = match read_request(request, max_request).await {
                Ok(request) => service.read(request).await,
                Err(status) => Err(status),
            };
            Ok(match answer {
                Ok(response) => streamed(response.into_inner()),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The one ReadRequest of the call, checked as tonic checks a request (uncompressed, within the
/// message limit, decodable), with the headers and extensions (the caller's identity) it came with.
async fn read_request(request: http::Request<Body>, max_request: usize) -> Result<tonic::Request<ReadRequest>, Status> {
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        return Err(Status::unimplemented(format!("the request is compressed with {encoding}, which this server does not accept")));
    }
    let too_large = || Status::resource_exhausted(format!("the ReadRequest exceeds {max_request} bytes"));
    // The frame head (5 bytes) and the message.
    let mut body = match Limited::new(body, max_request + 5).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => return Err(Status::cancelled(format!("the request did not arrive whole: {e}"))),
    };
    if body.len() < 5 {
        return Err(Status::invalid_argument("the call carries no ReadRequest"));
    }
    let compressed = body.get_u8();
    let len = body.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented("the ReadRequest is compressed, which this server does not accept"));
    }
    if len > max_request {
        return Err(too_large());
    }
    let message = body.get(..len).ok_or_else(|| Status::invalid_argument(format!("the ReadRequest is cut short: {} of {len} bytes", body.len())))?;
    let message = ReadRequest::decode(message).map_err(|e| Status::invalid_argument(format!("the request is not a valid ReadRequest ({e})")))?;
    Ok(tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message))
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
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
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
    head.extend_from_slice(&[0]);
    head.extend_from_slice(&((field.len() + data.len()) as u32).to_be_bytes());
    head.extend_from_slice(&field);
    (head.freeze(), data)
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", http::HeaderValue::from(tonic::Code::Internal as i32));
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;

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
