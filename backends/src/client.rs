//! The client side of REAPI that every Strata client shares: the remote tier here, and beside the
//! server `strata bot` and `strata bench`. One channel builder (plain or TLS), the HTTP/2 windows
//! large blobs need, one message-size rule and one retry backoff.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Result, StoreError};

/// HTTP/2 windows: the default 64 KiB stalls large transfers on every window update.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
pub const MAX_FRAME: u32 = 1 << 20;
/// The largest message a client sends or accepts: batches are bounded by the server's advertised
/// limit, and ByteStream chunks are 1 MiB, so this only guards against a runaway peer.
pub const MAX_MESSAGE: usize = 64 << 20;

/// An endpoint for `grpc://HOST:PORT`, or `grpcs://HOST:PORT` for TLS (the system's roots are
/// trusted, plus `ca_certificate`, PEM), with the windows sized for large blobs.
pub fn endpoint(address: &str, ca_certificate: Option<&[u8]>, connect_timeout: Duration) -> Result<Endpoint> {
    let (url, tls) = match address.split_once("://") {
        Some(("grpc" | "http", rest)) => (format!("http://{rest}"), false),
        Some(("grpcs" | "https", rest)) => (format!("https://{rest}"), true),
        _ => return Err(StoreError::Config(format!("{address:?}: expected grpc://HOST:PORT or grpcs://HOST:PORT"))),
    };
    let config_error = |e: tonic::transport::Error| StoreError::Config(format!("{address:?}: {e}"));
    let mut endpoint = Endpoint::from_shared(url).map_err(config_error)?;
    if tls {
        let mut tls_config = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = ca_certificate {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls_config).map_err(config_error)?;
    } else if ca_certificate.is_some() {
        return Err(StoreError::Config(format!("{address:?}: ca_certificate needs a grpcs:// endpoint")));
    }
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME))
}

/// A channel that connects on first use, so a client can start while its server is down.
pub fn channel(address: &str, ca_certificate: Option<&[u8]>, connect_timeout: Duration) -> Result<Channel> {
    Ok(endpoint(address, ca_certificate, connect_timeout)?.connect_lazy())
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
        assert!(endpoint("grpc://127.0.0.1:1", None, Duration::from_secs(1)).is_ok());
        assert!(endpoint("grpcs://127.0.0.1:1", None, Duration::from_secs(1)).is_ok());
        assert!(matches!(endpoint("127.0.0.1:1", None, Duration::from_secs(1)), Err(StoreError::Config(m)) if m.contains("expected grpc://")));
        assert!(matches!(endpoint("grpc://127.0.0.1:1", Some(b"pem"), Duration::from_secs(1)), Err(StoreError::Config(m)) if m.contains("grpcs://")));
    }
}
