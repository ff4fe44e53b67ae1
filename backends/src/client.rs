//! The client side of REAPI that every Strata client shares: the remote tier here, and beside the
//! server `strata bot` and `strata bench`. One channel builder (plain or TLS), the HTTP/2 windows
//! large blobs need, one message-size rule and one retry backoff.

use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http::{self, HeaderValue};
use tonic::codegen::Service;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Result, StoreError};

/// HTTP/2 windows: the default 64 KiB stalls large transfers on every window update.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// The largest message a client sends or accepts: batches are bounded by the server's advertised
/// limit, and ByteStream chunks are 1 MiB, so this only guards against a runaway peer.
pub const MAX_MESSAGE: usize = 64 << 20;

/// How a client proves who it is, and whom it trusts.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth {
    /// PEM certificates to trust for `grpcs://`, besides the system's roots.
    pub ca_certificate: Option<Vec<u8>>,
    /// Sent as `authorization: Bearer <token>` with every call.
    pub bearer_token: Option<String>,
    /// A client certificate chain and its key (PEM), for servers that ask for one.
    pub certificate: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientAuth {
    /// Reads the token from a file (surrounding whitespace ignored), if one is named.
    pub fn token_from_file(path: Option<&std::path::Path>) -> Result<Option<String>> {
        let Some(path) = path else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::Config(format!("cannot read the token file {}: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(StoreError::Config(format!("the token file {} is empty", path.display())));
        }
        Ok(Some(token.to_string()))
    }
}

/// An endpoint for `grpc://HOST:PORT`, or `grpcs://HOST:PORT` for TLS (the system's roots are
/// trusted, plus `auth.ca_certificate`), with the windows sized for large blobs.
pub fn endpoint(address: &str, auth: &ClientAuth, connect_timeout: Duration) -> Result<Endpoint> {
    let (url, tls) = match address.split_once("://") {
        Some(("grpc" | "http", rest)) => (format!("http://{rest}"), false),
        Some(("grpcs" | "https", rest)) => (format!("https://{rest}"), true),
        _ => return Err(StoreError::Config(format!("{address:?}: expected grpc://HOST:PORT or grpcs://HOST:PORT"))),
    };
    let config_error = |e: tonic::transport::Error| StoreError::Config(format!("{address:?}: {e}"));
    let mut endpoint = Endpoint::from_shared(url).map_err(config_error)?;
    if tls {
        let mut tls_config = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = &auth.ca_certificate {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((certificate, key)) = &auth.certificate {
            tls_config = tls_config.identity(Identity::from_pem(certificate, key));
        }
        endpoint = endpoint.tls_config(tls_config).map_err(config_error)?;
    } else if auth.ca_certificate.is_some() || auth.certificate.is_some() {
        return Err(StoreError::Config(format!("{address:?}: a CA or client certificate needs a grpcs:// endpoint")));
    }
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME))
}

/// A channel that connects on first use, so a client can start while its server is down.
pub fn channel(address: &str, auth: &ClientAuth, connect_timeout: Duration) -> Result<AuthChannel> {
    AuthChannel::new(endpoint(address, auth, connect_timeout)?.connect_lazy(), auth)
}

/// A channel that sends the client's bearer token with every call.
#[derive(Clone, Debug)]
pub struct AuthChannel {
    inner: Channel,
    authorization: Option<HeaderValue>,
}

impl AuthChannel {
    pub fn new(inner: Channel, auth: &ClientAuth) -> Result<AuthChannel> {
        let authorization = match &auth.bearer_token {
            Some(token) => {
                let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| StoreError::Config("the bearer token contains characters not allowed in a header".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(AuthChannel { inner, authorization })
    }
}

impl Service<http::Request<Body>> for AuthChannel {
    type Response = <Channel as Service<http::Request<Body>>>::Response;
    type Error = <Channel as Service<http::Request<Body>>>::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        self.inner.call(request)
    }
}

/// Exponential backoff between retries: doubling from `first` up to `cap`, reset after a success.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff { first, cap, next: first }
    }

    /// The delay to wait now; the following one is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn endpoints_are_checked() {
        let none = ClientAuth::default();
        assert!(endpoint("grpc://127.0.0.1:1", &none, Duration::from_secs(1)).is_ok());
        assert!(endpoint("grpcs://127.0.0.1:1", &none, Duration::from_secs(1)).is_ok());
        assert!(matches!(endpoint("127.0.0.1:1", &none, Duration::from_secs(1)), Err(StoreError::Config(m)) if m.contains("expected grpc://")));
        let ca = ClientAuth { ca_certificate: Some(b"pem".to_vec()), ..Default::default() };
        assert!(matches!(endpoint("grpc://127.0.0.1:1", &ca, Duration::from_secs(1)), Err(StoreError::Config(m)) if m.contains("grpcs://")));
        let bad = ClientAuth { bearer_token: Some("a\nb".into()), ..Default::default() };
        assert!(matches!(channel("grpc://127.0.0.1:1", &bad, Duration::from_secs(1)), Err(StoreError::Config(m)) if m.contains("bearer token")));
    }
}
