//! FetchBlob of `http://` and `https://` URIs, for Bazel's `--experimental_remote_downloader`: on a
//! miss Strata downloads the URI itself, on its client's behalf, so configuration says which URL
//! prefixes it may fetch. A download is streamed to a file under the data directory while it is
//! hashed (never held whole in memory), bounded in size and time, checked against a `checksum.sri`
//! qualifier when the client gives one, and only then stored in the CAS. `http_header:NAME`
//! qualifiers are sent as request headers. The client is hyper's, on the rustls stack the gRPC side
//! already uses.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Digest as _;
use strata_backends::{BlobWriter, Digest, DigestFunction, SingleFlight, StoreError};
use tokio::sync::Semaphore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cas::Cas;
use crate::quote::quote;

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;
/// Downloads in progress at once; more wait for a slot (each may hold up to max_size in the spool).
const MAX_DOWNLOADS: usize = 8;
/// Bytes per read when the downloaded file is copied into the CAS.
const COPY_CHUNK: usize = 1 << 20;

/// What the configuration allows.
#[derive(Clone, Debug)]
pub struct HttpFetchLimits {
    /// URL prefixes that may be fetched (`https://`, `https://mirror.example/`).
    pub allow: Vec<String>,
    pub max_size: u64,
    pub timeout: Duration,
    /// Where downloads are spooled while they are hashed.
    pub spool: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpFetchError {
    #[error("{0}")]
    Refused(String),
    #[error("downloading {uri}: {message}")]
    Failed { uri: String, message: String },
    #[error("downloading {uri}: the server answered {status}")]
    Missing { uri: String, status: u16 },
    #[error("downloading {uri}: no complete answer within {timeout:?}")]
    TimedOut { uri: String, timeout: Duration },
    #[error("{uri} is larger than the download limit of {limit} bytes (http_fetch.max_size)")]
    TooLarge { uri: String, limit: u64 },
    #[error("{uri} does not match its checksum.sri qualifier {sri}: the download is not stored")]
    Mismatch { uri: String, sri: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct HttpFetcher {
    limits: HttpFetchLimits,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Concurrent fetches of one URI (Bazel's parallel repository fetches) share one download.
    flights: SingleFlight<String, Digest>,
    slots: Semaphore,
}

/// A `checksum.sri` value: algorithm and expected hash.
struct Sri {
    text: String,
    algorithm: String,
    expected: Vec<u8>,
}

impl Sri {
    fn parse(text: &str) -> Result<Sri, HttpFetchError> {
        let refused = || HttpFetchError::Refused(format!("checksum.sri {} is not `sha256-BASE64` (or sha384, sha512)", quote(text)));
        let (algorithm, b64) = text.split_once('-').ok_or_else(refused)?;
        if !matches!(algorithm, "sha256" | "sha384" | "sha512") {
            return Err(refused());
        }
        let expected = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| refused())?;
        Ok(Sri { text: text.to_string(), algorithm: algorithm.to_string(), expected })
    }
}

/// Hashes a download as it arrives: the CAS digest, and the SRI algorithm's when it differs.
enum SriHasher {
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl SriHasher {
    fn new(algorithm: &str) -> SriHasher {
        match algorithm {
            "sha384" => SriHasher::Sha384(sha2::Sha384::new()),
            "sha512" => SriHasher::Sha512(sha2::Sha512::new()),
            _ => SriHasher::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            SriHasher::Sha256(h) => h.update(data),
            SriHasher::Sha384(h) => h.update(data),
            SriHasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            SriHasher::Sha256(h) => h.finalize().to_vec(),
            SriHasher::Sha384(h) => h.finalize().to_vec(),
            SriHasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

impl HttpFetcher {
    /// The downloader; parts of downloads a previous run left in the spool are removed.
    pub fn new(limits: HttpFetchLimits) -> Result<HttpFetcher, String> {
        if let Ok(entries) = std::fs::read_dir(&limits.spool) {
            for entry in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "part")) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("cannot load the system's CA certificates for https downloads: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpFetcher {
            limits,
            client: Client::builder(TokioExecutor::new()).build(https),
            flights: SingleFlight::default(),
            slots: Semaphore::new(MAX_DOWNLOADS),
        })
    }

    /// Whether this fetcher would try `uri` at all.
    pub fn handles(&self, uri: &str) -> bool {
        (uri.starts_with("http://") || uri.starts_with("https://")) && self.limits.allow.iter().any(|p| uri.starts_with(p.as_str()))
    }

    /// Downloads `uri` into the CAS and returns its digest; callers asking for the same URI and
    /// qualifiers meanwhile wait for this download instead of starting their own.
    pub async fn fetch(&self, cas: &Cas, function: DigestFunction, uri: &str, qualifiers: &[(String, String)]) -> Result<Digest, HttpFetchError> {
        let key = format!("{}\0{uri}\0{qualifiers:?}", function.name());
        self.flights.run(key, || self.fetch_once(cas, function, uri, qualifiers)).await
    }

    async fn fetch_once(&self, cas: &Cas, function: DigestFunction, uri: &str, qualifiers: &[(String, String)]) -> Result<Digest, HttpFetchError> {
        let _slot = self.slots.acquire().await.map_err(|e| self.failed(uri, e.to_string()))?;
        let sri = qualifiers.iter().find(|(k, _)| k == "checksum.sri").map(|(_, v)| Sri::parse(v)).transpose()?;
        let headers: Vec<(&str, &str)> =
            qualifiers.iter().filter_map(|(k, v)| Some((k.strip_prefix("http_header:")?, v.as_str()))).collect();
        let download = tokio::time::timeout(self.limits.timeout, self.download(function, uri, &headers, sri.as_ref()));
        let (digest, path) = match download.await {
            Ok(result) => result?,
            Err(_) => return Err(HttpFetchError::TimedOut { uri: quote(uri).to_string(), timeout: self.limits.timeout }),
        };
        let stored = store_file(cas, &digest, &path).await;
        let _ = tokio::fs::remove_file(&path).await;
        stored?;
        tracing::info!(uri = %quote(uri), %digest, "downloaded for a FetchBlob");
        Ok(digest)
    }

    fn failed(&self, uri: &str, message: String) -> HttpFetchError {
        HttpFetchError::Failed { uri: quote(uri).to_string(), message }
    }

    /// The response body of `uri` in a spool file, following redirects; its digest.
    async fn download(&self, function: DigestFunction, uri: &str, headers: &[(&str, &str)], sri: Option<&Sri>) -> Result<(Digest, PathBuf), HttpFetchError> {
        let mut url = uri.to_string();
        let mut response = None;
        for _ in 0..=MAX_REDIRECTS {
            let mut request = http::Request::get(url.as_str());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Empty::new()).map_err(|e| self.failed(uri, format!("not a valid request: {e}")))?;
            let answer = self.client.request(request).await.map_err(|e| self.failed(uri, format!("{e} ({:?})", std::error::Error::source(&e).map(|s| s.to_string()))))?;
            if answer.status().is_redirection() {
                let location = answer.headers().get(http::header::LOCATION).and_then(|l| l.to_str().ok());
                let next = location.ok_or_else(|| self.failed(uri, format!("{} without a Location", answer.status())))?;
                url = if next.starts_with("http://") || next.starts_with("https://") { next.to_string() } else { join(&url, next) };
                if !self.handles(&url) {
                    return Err(HttpFetchError::Refused(format!("{} redirects to {}, which is not allowed", quote(uri), quote(&url))));
                }
                continue;
            }
            response = Some(answer);
            break;
        }
        let response = response.ok_or_else(|| self.failed(uri, format!("more than {MAX_REDIRECTS} redirects")))?;
        if matches!(response.status().as_u16(), 404 | 410) {
            return Err(HttpFetchError::Missing { uri: quote(uri).to_string(), status: response.status().as_u16() });
        }
        if !response.status().is_success() {
            return Err(self.failed(uri, format!("the server answered {}", response.status())));
        }
        tokio::fs::create_dir_all(&self.limits.spool).await.map_err(|e| StoreError::io(&self.limits.spool, e))?;
        let path = self.limits.spool.join(format!("{:016x}.part", rand_id()));
        let result = self.receive(function, uri, response.into_body(), &path, sri).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result.map(|digest| (digest, path))
    }

    async fn receive(&self, function: DigestFunction, uri: &str, mut body: hyper::body::Incoming, path: &PathBuf, sri: Option<&Sri>) -> Result<Digest, HttpFetchError> {
        let mut file = tokio::fs::File::create(path).await.map_err(|e| StoreError::io(path, e))?;
        let mut hasher = function.hasher();
        let mut sri_hasher = sri.map(|s| SriHasher::new(&s.algorithm));
        let mut size = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.failed(uri, format!("the body broke off: {e}")))?;
            let Ok(data) = frame.into_data() else { continue };
            size += data.len() as u64;
            if size > self.limits.max_size {
                return Err(HttpFetchError::TooLarge { uri: quote(uri).to_string(), limit: self.limits.max_size });
            }
            hasher.update(&data);
            if let Some(h) = sri_hasher.as_mut() {
                h.update(&data);
            }
            file.write_all(&data).await.map_err(|e| StoreError::io(path, e))?;
        }
        file.flush().await.map_err(|e| StoreError::io(path, e))?;
        if let (Some(sri), Some(h)) = (sri, sri_hasher) {
            if h.finish() != sri.expected {
                return Err(HttpFetchError::Mismatch { uri: quote(uri).to_string(), sri: sri.text.clone() });
            }
        }
        Ok(Digest { function, hash: hasher.finish(), size })
    }
}

/// A relative redirect target against the URL it came from.
fn join(base: &str, location: &str) -> String {
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    if location.starts_with('/') {
        format!("{}{location}", &base[..host_end])
    } else {
        let dir_end = base.rfind('/').filter(|&i| i >= host_end).map_or(base.len(), |i| i + 1);
        format!("{}{}{location}", &base[..dir_end], if dir_end == host_end { "/" } else { "" })
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Streams a verified file into the CAS (the writer checks the digest once more on commit).
async fn store_file(cas: &Cas, digest: &Digest, path: &PathBuf) -> Result<(), HttpFetchError> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| StoreError::io(path, e))?;
    let mut writer = Box::new(cas.writer(digest).await?);
    let mut buf = vec![0u8; COPY_CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        writer.append(Bytes::copy_from_slice(&buf[..n])).await?;
    }
    writer.commit().await?;
    Ok(())
}

impl HttpFetchError {
    /// The code a FetchBlobResponse's status carries for this failure at the origin (the Remote
    /// Asset API reports those in the response, not as the call's own status).
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            HttpFetchError::Refused(_) => Code::PermissionDenied,
            HttpFetchError::Failed { .. } => Code::Unavailable,
            HttpFetchError::Missing { .. } => Code::NotFound,
            HttpFetchError::TimedOut { .. } => Code::DeadlineExceeded,
            HttpFetchError::Mismatch { .. } => Code::Aborted,
            HttpFetchError::TooLarge { .. } => Code::ResourceExhausted,
            HttpFetchError::Store(StoreError::TooLarge { .. } | StoreError::Full { .. } | StoreError::NoSpace { .. }) => Code::ResourceExhausted,
            HttpFetchError::Store(_) => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_redirects_resolve_against_the_url() {
        assert_eq!(join("http://h:1/a/b.tar", "/c.tar"), "http://h:1/c.tar");
        assert_eq!(join("http://h:1/a/b.tar", "c.tar"), "http://h:1/a/c.tar");
        assert_eq!(join("http://h:1", "c.tar"), "http://h:1/c.tar");
    }

    #[test]
    fn sri_values_are_checked() {
        assert!(Sri::parse("sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").is_ok());
        for bad in ["md5-xyz", "sha256", "sha256-***"] {
            assert!(matches!(Sri::parse(bad), Err(HttpFetchError::Refused(_))), "{bad}");
        }
    }
}
