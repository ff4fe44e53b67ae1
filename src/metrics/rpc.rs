//! The RPC metrics layer: one tower layer around every gRPC service counts each call by service,
//! method and status code, times it until its last byte (streams included), and counts the bytes
//! each way. The status is read where gRPC puts it: the headers of a trailers-only answer, else the
//! trailers; a call whose response is dropped unfinished counts as CANCELLED, and so does one whose
//! client broke off its request (reset the stream): whatever the server answers, nobody hears it,
//! and tonic answers a unary call reset before its message arrived with INTERNAL ("Missing request
//! message"), a fault of nobody's on the server.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    pub service: String,
    pub method: String,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub service: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub service: String,
    pub direction: &'static str,
}

/// Routes whose metric handles are kept for reuse; calls of further paths look theirs up each time.
const MAX_ROUTES: usize = 512;

#[derive(Clone)]
pub struct RpcMetrics {
    calls: Family<Call, Counter>,
    latency: Family<Method, Histogram>,
    bytes: Family<Direction, Counter>,
    /// The handles of each path seen, so that a call costs one map lookup, not one per metric.
    routes: Arc<RwLock<HashMap<String, Arc<Route>>>>,
}

impl Default for RpcMetrics {
    fn default() -> Self {
        RpcMetrics {
            calls: Family::default(),
            // 50 µs to ~27 min: from an AC hit to a long WaitExecution stream.
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.00005, 4.0, 12))),
            bytes: Family::default(),
            routes: Arc::default(),
        }
    }
}

/// The metric handles of one route.
struct Route {
    service: String,
    method: String,
    bytes_in: Counter,
    bytes_out: Counter,
    /// Its latency histogram and OK counter, made by the first call that is not UNIMPLEMENTED, so
    /// that a made-up method never becomes a series.
    served: OnceLock<(Histogram, Counter)>,
}

impl RpcMetrics {
    fn route(&self, path: &str, services: &[&str]) -> Arc<Route> {
        if let Some(route) = self.routes.read().get(path) {
            return route.clone();
        }
        let (service, method) = route(path, services);
        let bytes = |direction| self.bytes.get_or_create(&Direction { service: service.clone(), direction }).clone();
        let made = Arc::new(Route { bytes_in: bytes("in"), bytes_out: bytes("out"), service, method, served: OnceLock::new() });
        let mut routes = self.routes.write();
        if made.service != "unknown" && routes.len() < MAX_ROUTES {
            routes.insert(path.to_string(), made.clone());
        }
        made
    }
}

impl RpcMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("strata_grpc_requests", "gRPC calls by service, method and status code", self.calls.clone());
        registry.register("strata_grpc_request_seconds", "gRPC call latency, until the last response byte", self.latency.clone());
        registry.register("strata_grpc_bytes", "gRPC message bytes by service, in (requests) and out (responses)", self.bytes.clone());
    }
}

/// The tower layer to put around the gRPC router, with the full names of the services it serves.
#[derive(Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<super::Metrics>,
    services: Arc<[&'static str]>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<super::Metrics>, services: &[&'static str]) -> Self {
        RpcMetricsLayer { metrics, services: services.into() }
    }
}

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;
    fn layer(&self, inner: S) -> RpcMetricsService<S> {
        RpcMetricsService { inner, metrics: self.metrics.clone(), services: self.services.clone() }
    }
}

#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<super::Metrics>,
    services: Arc<[&'static str]>,
}

/// Service and method of a gRPC path, `/package.Service/Method`: the last part of the service's
/// full name, so labels stay short (`ByteStream`, `Read`). A service the server does not serve, and
/// any other path, counts as `unknown`: names chosen by callers must not become labels.
fn route(path: &str, services: &[&str]) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method)) if services.contains(&service) && method.len() <= 64 => {
            (service.rsplit('.').next().unwrap_or(service).to_string(), method.to_string())
        }
        _ => ("unknown".into(), "unknown".into()),
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<Metered<ReqBody>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ReqBody: Body<Data = Bytes> + Unpin,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = http::Response<Metered<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let route = self.metrics.rpc.route(request.uri().path(), &self.services);
        let (bytes_in, bytes_out) = (route.bytes_in.clone(), route.bytes_out.clone());
        let broken_off = Arc::new(AtomicBool::new(false));
        let call = Recorder { metrics: self.metrics.clone(), route, started: Instant::now(), done: false, broken_off: broken_off.clone() };
        let request = request.map(|body| Metered { body, bytes: bytes_in, call: None, broken_off: Some(broken_off) });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let mut call = call;
            let trailers_only = grpc_status(response.headers());
            if let Some(code) = trailers_only {
                call.finish(code);
            }
            Ok(response.map(|body| Metered { body, bytes: bytes_out, call: Some(call), broken_off: None }))
        })
    }
}

/// Counts a call once, when its status is known.
struct Recorder {
    metrics: Arc<super::Metrics>,
    route: Arc<Route>,
    started: Instant,
    done: bool,
    /// Set when the request body failed: the client reset the stream or the connection broke.
    broken_off: Arc<AtomicBool>,
}

impl Recorder {
    fn finish(&mut self, code: tonic::Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let code = if self.broken_off.load(Relaxed) { tonic::Code::Cancelled } else { code };
        let rpc = &self.metrics.rpc;
        let seconds = self.started.elapsed().as_secs_f64();
        // A known service's unknown method is UNIMPLEMENTED: its name is the caller's, not a label.
        if code == tonic::Code::Unimplemented {
            let (service, method) = ("unknown".to_string(), "unknown".to_string());
            rpc.latency.get_or_create(&Method { service: service.clone(), method: method.clone() }).observe(seconds);
            rpc.calls.get_or_create(&Call { service, method, code: code_name(code) }).inc();
            return;
        }
        let (service, method) = (&self.route.service, &self.route.method);
        let (latency, ok) = self.route.served.get_or_init(|| {
            let latency = rpc.latency.get_or_create(&Method { service: service.clone(), method: method.clone() }).clone();
            (latency, rpc.calls.get_or_create(&Call { service: service.clone(), method: method.clone(), code: "OK" }).clone())
        });
        latency.observe(seconds);
        match code {
            tonic::Code::Ok => ok.inc(),
            _ => rpc.calls.get_or_create(&Call { service: service.clone(), method: method.clone(), code: code_name(code) }).inc(),
        };
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from_i32(value))
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A body whose data bytes are counted; a response body also ends its call's record, and a request
/// body marks its call broken off if it fails.
pub struct Metered<B> {
    body: B,
    bytes: Counter,
    call: Option<Recorder>,
    broken_off: Option<Arc<AtomicBool>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                }
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), self.call.as_mut()) {
                    call.finish(grpc_status(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.as_mut() {
                    call.finish(tonic::Code::Ok);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(broken_off) = &self.broken_off {
                    broken_off.store(true, Relaxed);
                }
                if let Some(call) = self.call.as_mut() {
                    call.finish(tonic::Code::Internal);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routes_name_known_services_only() {
        let known = ["google.bytestream.ByteStream"];
        assert_eq!(route("/google.bytestream.ByteStream/Read", &known), ("ByteStream".into(), "Read".into()));
        assert_eq!(route("/x", &known), ("unknown".into(), "unknown".into()));
        assert_eq!(route("/evil.Service/Read", &known), ("unknown".into(), "unknown".into()));
        let long = format!("/google.bytestream.ByteStream/{}", "m".repeat(100));
        assert_eq!(route(&long, &known), ("unknown".into(), "unknown".into()));
    }
}
