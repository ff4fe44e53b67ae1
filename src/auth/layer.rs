//! The one place calls are authorized: a tower layer around the gRPC router. It authenticates the
//! caller, knows which permission each method needs, refuses a caller who has it on no instance,
//! and leaves an `Access` in the request; the instance lookup of the services checks it against the
//! instance the request names. Health and unknown methods need nothing (the latter end UNIMPLEMENTED).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::{Access, Authenticator};
use crate::config::Permission;

/// The permission a method needs, by its gRPC path; None for those anyone may call.
pub fn needs(path: &str) -> Option<Permission> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    use Permission::*;
    Some(match (service, method) {
        ("build.bazel.remote.execution.v2.ContentAddressableStorage", "BatchUpdateBlobs") => Write,
        ("build.bazel.remote.execution.v2.ContentAddressableStorage", _) => Read,
        ("google.bytestream.ByteStream", "Read") => Read,
        ("google.bytestream.ByteStream", _) => Write,
        ("build.bazel.remote.execution.v2.ActionCache", "UpdateActionResult") => WriteAc,
        ("build.bazel.remote.execution.v2.ActionCache", _) => Read,
        ("build.bazel.remote.execution.v2.Capabilities", _) => Read,
        ("build.bazel.remote.asset.v1.Fetch", _) => Read,
        ("build.bazel.remote.asset.v1.Push", _) => Write,
        ("build.bazel.remote.execution.v2.Execution", _) => Execute,
        ("google.longrunning.Operations", _) => Execute,
        ("google.devtools.remoteworkers.v1test2.Bots", _) => Bot,
        ("strata.admin.v1.Admin", _) => Admin,
        _ => return None,
    })
}

#[derive(Clone)]
pub struct AuthLayer {
    pub authenticator: Arc<Authenticator>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authorize<S>;
    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Authorize<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<R>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(needs) = needs(request.uri().path()) else { return Either::Right(self.inner.call(request)) };
        let authorization = request.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let certificates = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|tls| tls.peer_certs());
        let certificate = certificates.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let checked = self.authenticator.authenticate(authorization, certificate).and_then(|caller| {
            let have = caller.grants.anywhere();
            // Admins manage everyone's operations without running any themselves.
            if have.has(needs) || (needs == Permission::Execute && have.has(Permission::Admin)) {
                Ok(caller)
            } else {
                // The method's name as the caller sent it, if it is a plausible one.
                let method = request.uri().path().rsplit('/').next().filter(|m| m.len() <= 64 && m.bytes().all(|b| b.is_ascii_alphanumeric()));
                Err(caller.denied(method.unwrap_or("this call"), needs))
            }
        });
        match checked {
            Ok(caller) => {
                request.extensions_mut().insert(Access { caller, needs });
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(futures::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_family_has_its_permission() {
        let cases = [
            ("/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs", Some(Permission::Read)),
            ("/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs", Some(Permission::Write)),
            ("/google.bytestream.ByteStream/Write", Some(Permission::Write)),
            ("/google.bytestream.ByteStream/QueryWriteStatus", Some(Permission::Write)),
            ("/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult", Some(Permission::WriteAc)),
            ("/google.longrunning.Operations/CancelOperation", Some(Permission::Execute)),
            ("/google.devtools.remoteworkers.v1test2.Bots/CreateBotSession", Some(Permission::Bot)),
            ("/strata.admin.v1.Admin/Status", Some(Permission::Admin)),
            ("/grpc.health.v1.Health/Check", None),
            ("/made.up.Service/Method", None),
            ("garbage", None),
        ];
        for (path, want) in cases {
            assert_eq!(needs(path), want, "{path}");
        }
    }
}
