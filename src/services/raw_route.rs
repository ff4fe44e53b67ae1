//! One gRPC method answered by hand beside the generated server that answers the rest of its
//! service. tonic's encoder copies every message into its own buffer (and grows that buffer by
//! copying again) before hyper sends it; the methods that answer with blobs (ByteStream Read,
//! BatchReadBlobs) instead send each blob as the `Bytes` storage handed out, behind a few bytes of
//! message head, and h2 writes it from there. The methods that receive blobs (ByteStream Write,
//! BatchUpdateBlobs) read their request as the pieces h2 received (`request_body`), where tonic's
//! decoder copies every message into its own buffer first.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::Stream;
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::request_body::RequestMessages;

/// Answers a call of the intercepted method.
pub type Handler = Arc<dyn Fn(http::Request<Body>) -> BoxFuture<'static, http::Response<Body>> + Send + Sync>;

/// A handler that decodes the call's one `M` (see `unary_request`; `name` is the message's name), has
/// `call` answer it, and sends the answer as `respond` makes it, or the status of what failed.
pub fn handler<M, T, F, Fut>(max_request: usize, name: &'static str, call: F, respond: fn(T) -> http::Response<Body>) -> Handler
where
    M: Message + Default + 'static,
    T: 'static,
    F: Fn(tonic::Request<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    let call = Arc::new(call);
    Arc::new(move |request| {
        let call = call.clone();
        Box::pin(async move {
            let answer = match unary_request::<M>(request, max_request, name).await {
                Ok(request) => call(request).await,
                Err(status) => Err(status),
            };
            answer.map_or_else(Status::into_http, respond)
        })
    })
}

/// A service whose calls of `path` go to `handler`, and every other call to `inner`.
#[derive(Clone)]
pub struct Intercept<S> {
    path: &'static str,
    handler: Handler,
    inner: S,
}

impl<S> Intercept<S> {
    pub fn new(path: &'static str, handler: Handler, inner: S) -> Self {
        Intercept { path, handler, inner }
    }
}

impl<S: NamedService> NamedService for Intercept<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Intercept<S>
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
        if request.uri().path() != self.path {
            let mut inner = self.inner.clone();
            return Box::pin(async move { inner.call(request).await });
        }
        let answer = (self.handler)(request);
        Box::pin(async move { Ok(answer.await) })
    }
}

/// The one request message of a unary or server-streaming call, checked as tonic checks it
/// (uncompressed, within the message limit, decodable), with the headers and extensions (the
/// caller's identity) it came with. `name` is the message's name, for errors.
pub async fn unary_request<M: Message + Default>(request: http::Request<Body>, max_request: usize, name: &'static str) -> Result<tonic::Request<M>, Status> {
    let (parts, body) = request.into_parts();
    let mut messages = RequestMessages::new(&parts.headers, body, max_request, name)?;
    let message = messages.next().await?.ok_or_else(|| Status::invalid_argument(format!("the call carries no {name}")))?;
    let message = M::decode(message).map_err(|e| Status::invalid_argument(format!("the request is not a valid {name} ({e})")))?;
    Ok(tonic::Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message))
}

/// The gRPC response of a unary call answered with `message`.
pub fn unary_response(message: impl Message) -> http::Response<Body> {
    let len = message.encoded_len();
    let mut encoded = Vec::with_capacity(5 + len);
    encoded.extend_from_slice(&frame_head(len));
    message.encode_raw(&mut encoded);
    let frames = [Frame::data(Bytes::from(encoded)), Frame::trailers(trailers(&Status::ok("")))];
    response(futures::stream::iter(frames.map(Ok)))
}

/// The 5-byte gRPC frame head of an uncompressed message of `len` bytes.
pub fn frame_head(len: usize) -> [u8; 5] {
    let mut head = [0u8; 5];
    head[1..].copy_from_slice(&(len as u32).to_be_bytes());
    head
}

/// A gRPC response whose body is `frames` (data, then the trailers that carry the status).
pub fn response(frames: impl Stream<Item = Result<Frame<Bytes>, Status>> + Send + 'static) -> http::Response<Body> {
    let mut response = http::Response::new(Body::new(StreamBody::new(frames)));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// The trailers that end a call with `status`.
pub fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", http::HeaderValue::from(tonic::Code::Internal as i32));
    }
    trailers
}
