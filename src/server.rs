//! Builds a server from a configuration and runs it until shutdown. Shutdown stops accepting calls,
//! lets calls in flight finish, then syncs the disk logs so that nothing acknowledged is lost.

use std::future::Future;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_server::ActionCacheServer;
use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_server::CapabilitiesServer;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_server::ContentAddressableStorageServer;
use bazel_remote_apis::build::bazel::remote::execution::v2::execution_server::ExecutionServer;
use strata_backends::bytestream::byte_stream_server::ByteStreamServer;
use bazel_remote_apis::google::longrunning::operations_server::OperationsServer;
use strata_backends::DiskLog;
use strata_backends::StoreError;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::action_results::ActionCaches;
use crate::auth::layer::AuthLayer;
use crate::auth::{Authenticator, Grants};
use crate::assets::http::{HttpFetchLimits, HttpFetcher};
use crate::assets::Assets;
use crate::cas::Cas;
use crate::bot::BotArgs;
use crate::config::{Config, ExecutionConfig, LocalBotConfig, Service};
use crate::protocol::rwapi::bots_server::BotsServer;
use crate::exec::scheduler::{Scheduler, SchedulerConfig};
use crate::services::bots::BotsService;
use crate::services::execution::ExecutionService;
use crate::services::operations::OperationsService;
use crate::instances::{Instance, Instances};
use crate::services::action_cache::ActionCacheService;
use crate::services::bytestream::ByteStreamService;
use crate::services::bytestream_read::{read_handler, READ_PATH};
use crate::services::bytestream_write::{write_handler, WRITE_PATH};
use crate::services::cas_batch_read::{batch_read_handler, BATCH_READ_PATH};
use crate::services::cas_batch_update::{batch_update_handler, BATCH_UPDATE_PATH};
use crate::services::raw_route::Intercept;
use crate::services::capabilities::CapabilitiesService;
use crate::services::asset::AssetService;
use crate::services::cas::CasService;
use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::FetchServer;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::PushServer;
use crate::storage;
use crate::admin::Admin;
use crate::health::Health;
use crate::metrics::rpc::RpcMetricsLayer;
use crate::metrics::{Exporter, Metrics};
use crate::protocol::admin::admin_server::AdminServer;
use crate::services::admin::AdminService;
use crate::uploads::ParkingLimits;

/// How long calls in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// HTTP/2 flow control and framing sized for multi-megabyte blobs.
use crate::protocol::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};

/// Room for protobuf framing around a maximal batch.
const MESSAGE_OVERHEAD: usize = 1 << 20;

pub struct Server {
    instances: Arc<Instances>,
    metrics: Arc<Metrics>,
    stacks: Vec<Arc<storage::Storage>>,
    health_probe_interval: std::time::Duration,
    /// Where `/metrics`, the status page and the health endpoints are served, if anywhere.
    http: Option<TcpListener>,
    disks: Vec<DiskLog>,
    uploads: ParkingLimits,
    scheduler: Option<Arc<Scheduler>>,
    /// Bots to run in this process once the address is known.
    bots: Vec<BotArgs>,
    /// The certificate chain and key to serve TLS with (PEM), and the CA of client certificates.
    tls: Option<(Identity, Option<Certificate>)>,
    authenticator: Arc<Authenticator>,
}

const CAPABILITIES: &str = "build.bazel.remote.execution.v2.Capabilities";
const ADMIN: &str = "strata.admin.v1.Admin";
const HEALTH: &str = "grpc.health.v1.Health";

/// The gRPC services a server with these instances runs, by their full names, each with the storage
/// stacks of the instances that offer it (a service is healthy while all of them serve).
fn served_services(instances: &Instances, execution: bool) -> Vec<(&'static str, Vec<String>)> {
    let storages = |pick: fn(&Instance) -> bool| -> Vec<String> {
        instances.all().filter(|i| pick(i)).filter_map(|i| Some(i.storage.as_ref()?.name.clone())).collect()
    };
    let mut names = vec![(CAPABILITIES, Vec::new()), (ADMIN, Vec::new())];
    if instances.any_serves(|i| i.cas.is_some()) {
        let s = storages(|i| i.cas.is_some());
        names.extend([("build.bazel.remote.execution.v2.ContentAddressableStorage", s.clone()), ("google.bytestream.ByteStream", s)]);
    }
    if instances.any_serves(|i| i.action_cache.is_some()) {
        names.push(("build.bazel.remote.execution.v2.ActionCache", storages(|i| i.action_cache.is_some())));
    }
    if instances.any_serves(|i| i.assets.is_some()) {
        let s = storages(|i| i.assets.is_some());
        names.extend([("build.bazel.remote.asset.v1.Fetch", s.clone()), ("build.bazel.remote.asset.v1.Push", s)]);
    }
    if execution {
        let s = storages(|i| i.execution.is_some());
        names.extend([
            ("build.bazel.remote.execution.v2.Execution", s.clone()),
            ("google.longrunning.Operations", Vec::new()),
            ("google.devtools.remoteworkers.v1test2.Bots", s),
        ]);
    }
    names
}

/// Sets each service's gRPC health from its storage stacks' health; "" is the server as a whole.
async fn report_health(reporter: &tonic_health::server::HealthReporter, served: &[(&'static str, Vec<String>)], health: &Health) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    for (name, storages) in served {
        let up = storages.iter().all(|s| health.stack_up(s));
        reporter.set_service_status(*name, if up { Serving } else { NotServing }).await;
    }
    reporter.set_service_status("", if health.all_up() { Serving } else { NotServing }).await;
}

/// A bot of the configuration; its server address is filled in when the listener is bound.
fn local_bot(config: &Config, bot: &LocalBotConfig) -> BotArgs {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    BotArgs {
        server: String::new(),
        cas: None,
        instance: bot.instance.clone(),
        capacity: bot.capacity.unwrap_or(cores),
        properties: bot.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        runner: bot.runner,
        work_dir: config.data_path(&bot.work_dir),
        bot_id: None,
        max_input_paths: crate::bot::DEFAULT_MAX_INPUT_PATHS,
        cache_size: bot.cache_size,
        credentials: Default::default(),
        token: None,
        run_as: bot.run_as.clone(),
        spawner: crate::bot::spawner::program().map(std::path::Path::to_path_buf),
    }
}

/// A server others can reach should not let anyone write results or serve as a bot.
fn warn_if_open(config: &Config, authenticator: &Authenticator) {
    if let Some(warning) = open_warning(&config.listen, authenticator.anonymous()) {
        tracing::warn!("{warning}");
    }
}

fn open_warning(listen: &str, anonymous: crate::auth::Permissions) -> Option<String> {
    use crate::config::Permission;
    let loopback = listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    let risky: Vec<&str> = [Permission::Write, Permission::WriteAc, Permission::Bot].into_iter().filter(|p| anonymous.has(*p)).map(|p| p.name()).collect();
    if loopback || risky.is_empty() {
        return None;
    }
    let harm = if anonymous.has(Permission::WriteAc) { "forge cached results" } else { "fill the cache or take work" };
    Some(format!(
        "listening on {listen} with anonymous {} permission: anyone who reaches it can {harm}; add an `auth` section (see config/auth.yaml)",
        risky.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::open_warning;
    use crate::auth::Permissions;
    use crate::config::Permission;

    #[test]
    fn anonymous_writers_are_warned_about_off_loopback_only() {
        assert_eq!(open_warning("127.0.0.1:50051", Permissions::ALL), None);
        assert_eq!(open_warning("[::1]:50051", Permissions::ALL), None);
        assert_eq!(open_warning("0.0.0.0:50051", Permissions::of(&[Permission::Read, Permission::Execute])), None);
        let warning = open_warning("0.0.0.0:50051", Permissions::ALL).unwrap_or_default();
        assert!(warning.contains("write, write_ac, bot") && warning.contains("forge"), "{warning}");
        let warning = open_warning("10.0.0.1:50051", Permissions::of(&[Permission::Bot])).unwrap_or_default();
        assert!(warning.contains("anonymous bot permission"), "{warning}");
    }
}

pub fn scheduler_config(config: &ExecutionConfig) -> SchedulerConfig {
    SchedulerConfig {
        queue_timeout: config.queue_timeout,
        max_execution_timeout: config.max_execution_timeout,
        bot_session_timeout: config.bot_session_timeout,
        max_attempts: config.max_attempts,
        operation_retention: config.operation_retention,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Tls(String),
    #[error("http_fetch: {0}")]
    HttpFetch(String),
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthSetupError),
}

impl Server {
    pub async fn build(config: &Config) -> Result<Server, ServeError> {
        let metrics = Arc::new(Metrics::default());
        let built = storage::build(config, &metrics.upstream).await?;
        let http = match &config.http_fetch {
            Some(h) => Some(Arc::new(
                HttpFetcher::new(HttpFetchLimits {
                    allow: h.allow.clone(),
                    max_size: h.max_size.0,
                    timeout: h.timeout,
                    spool: config.data_path(std::path::Path::new("downloads")),
                })
                .map_err(ServeError::HttpFetch)?,
            )),
            None => None,
        };
        let mut instances = Vec::new();
        for ic in &config.instances {
            let stack = built.stacks[&ic.storage].clone();
            let cas = Cas::new(stack.cas.clone());
            instances.push(Instance {
                name: ic.name.clone(),
                cas: ic.services.contains(&Service::Cas).then(|| cas.clone()),
                action_cache: ic.services.contains(&Service::ActionCache).then(|| (stack.action_cache.clone(), cas.clone())),
                execution: ic.services.contains(&Service::Execution).then(|| (stack.action_cache.clone(), cas.clone())),
                assets: ic.services.contains(&Service::Asset).then(|| Assets {
                    index: stack.asset_index.clone(),
                    upstream: stack.asset_upstream.clone(),
                    http: http.clone(),
                    cas,
                }),
                storage: Some(stack),
            });
        }
        let uploads = ParkingLimits {
            ttl: config.resumable_upload_ttl,
            max_uploads: config.resumable_uploads_max,
            max_bytes: config.resumable_uploads_max_bytes.0,
        };
        let mut server = Server::with_metrics(instances, config.max_batch_total_size.0, uploads, metrics);
        server.stacks = built.stacks.into_values().collect();
        server.health_probe_interval = config.health_probe_interval;
        server.disks = built.disks;
        server.bots = config.execution.bots.iter().map(|b| local_bot(config, b)).collect();
        if let Some(tls) = &config.tls {
            let read = |path: &std::path::Path, what: &str| {
                std::fs::read(path).map_err(|e| ServeError::Tls(format!("tls.{what}: cannot read {}: {e}", path.display())))
            };
            let client_ca = tls.client_ca.as_deref().map(|p| read(p, "client_ca")).transpose()?.map(Certificate::from_pem);
            server.tls = Some((Identity::from_pem(read(&tls.certificate, "certificate")?, read(&tls.key, "key")?), client_ca));
        }
        let mut authenticator = Authenticator::from_config(config)?;
        if config.auth.is_some() && !server.bots.is_empty() {
            // The bots in this process get an identity of their own, known only to it.
            let token = crate::auth::random_token()?;
            authenticator.add_token("local-bots", &token, Grants::local_bots());
            for bot in &mut server.bots {
                bot.token = Some(token.clone());
            }
        }
        warn_if_open(config, &authenticator);
        server.authenticator = Arc::new(authenticator);
        if server.instances.any_serves(|i| i.execution.is_some()) {
            server.scheduler = Some(Scheduler::start(scheduler_config(&config.execution), Arc::new(ActionCaches(server.instances.action_caches()))));
        }
        Ok(server)
    }

    /// A server over instances built elsewhere (embedding, tests).
    pub fn from_instances(instances: Vec<Instance>, max_batch_total_size: u64, uploads: ParkingLimits) -> Server {
        Server::with_metrics(instances, max_batch_total_size, uploads, Arc::new(Metrics::default()))
    }

    fn with_metrics(instances: Vec<Instance>, max_batch_total_size: u64, uploads: ParkingLimits, metrics: Arc<Metrics>) -> Server {
        let instances = Arc::new(Instances::new(instances, max_batch_total_size, metrics.clone()));
        Server {
            instances,
            metrics,
            stacks: Vec::new(),
            health_probe_interval: std::time::Duration::from_secs(10),
            http: None,
            disks: Vec::new(),
            uploads,
            scheduler: None,
            bots: Vec::new(),
            tls: None,
            authenticator: Arc::new(Authenticator::open()),
        }
    }

    /// Authenticates and authorizes calls with `authenticator` (servers built from a configuration
    /// take it from the `auth` section).
    pub fn with_authenticator(mut self, authenticator: Authenticator) -> Server {
        self.authenticator = Arc::new(authenticator);
        self
    }

    /// Serves HTTP (`/metrics`, the status page, `/healthz`, `/readyz`) on `listener` too.
    pub fn with_http(mut self, listener: TcpListener) -> Server {
        self.http = Some(listener);
        self
    }

    /// Binds the configured address.
    pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr: addr.to_string(), source })
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let max_message = self.instances.max_batch_total_size as usize + MESSAGE_OVERHEAD;
        let instances = self.instances.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some((identity, client_ca)) = self.tls.clone() {
            let mut tls = ServerTlsConfig::new().identity(identity);
            if let Some(ca) = client_ca {
                // Clients without a certificate may still connect, with a token or anonymously.
                tls = tls.client_ca_root(ca).client_auth_optional(true);
            }
            builder = builder
                .tls_config(tls)
                .map_err(|e| ServeError::Tls(format!("tls: the certificate or key is not usable: {e}")))?;
        }
        let served = served_services(&instances, self.scheduler.is_some());
        let mut names: Vec<&'static str> = served.iter().map(|(n, _)| *n).collect();
        names.push(HEALTH);
        let mut router = builder
            .layer(RpcMetricsLayer::new(self.metrics.clone(), &names))
            .layer(crate::status::DecodeStatusLayer)
            .layer(AuthLayer { authenticator: self.authenticator.clone() })
            .tcp_nodelay(true)
            // HTTP/2's default 64 KiB windows stall large uploads on every window update.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .add_service(CapabilitiesServer::new(CapabilitiesService { instances: instances.clone() }));
        if instances.any_serves(|i| i.cas.is_some()) {
            let bytestream = Arc::new(ByteStreamService::new(instances.clone(), self.uploads));
            let generated = ByteStreamServer::from_arc(bytestream.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message);
            let cas = Arc::new(CasService { instances: instances.clone() });
            let generated_cas = ContentAddressableStorageServer::from_arc(cas.clone())
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message);
            router = router
                .add_service(Intercept::new(
                    BATCH_READ_PATH,
                    batch_read_handler(cas.clone(), max_message),
                    Intercept::new(BATCH_UPDATE_PATH, batch_update_handler(cas, max_message), generated_cas),
                ))
                .add_service(Intercept::new(
                    READ_PATH,
                    read_handler(bytestream.clone(), max_message),
                    Intercept::new(WRITE_PATH, write_handler(bytestream, max_message), generated),
                ));
        }
        if instances.any_serves(|i| i.action_cache.is_some()) {
            router = router.add_service(
                ActionCacheServer::new(ActionCacheService { instances: instances.clone() })
                    .max_decoding_message_size(max_message)
                    .max_encoding_message_size(max_message),
            );
        }
        if instances.any_serves(|i| i.assets.is_some()) {
            let service = || AssetService { instances: instances.clone() };
            router = router
                .add_service(FetchServer::new(service()).max_decoding_message_size(max_message).max_encoding_message_size(max_message))
                .add_service(PushServer::new(service()).max_decoding_message_size(max_message).max_encoding_message_size(max_message));
        }
        if let Some(scheduler) = &self.scheduler {
            router = router
                .add_service(
                    ExecutionServer::new(ExecutionService { instances: instances.clone(), scheduler: scheduler.clone() })
                        .max_decoding_message_size(max_message)
                        .max_encoding_message_size(max_message),
                )
                .add_service(OperationsServer::new(OperationsService { scheduler: scheduler.clone() }))
                .add_service(
                    BotsServer::new(BotsService { instances: instances.clone(), scheduler: scheduler.clone() })
                        .max_decoding_message_size(max_message)
                        .max_encoding_message_size(max_message),
                );
        }
        let health = Arc::new(Health::new(self.stacks.clone()));
        let admin = Arc::new(Admin {
            instances: instances.clone(),
            scheduler: self.scheduler.clone(),
            health: health.clone(),
            metrics: self.metrics.clone(),
        });
        router = router.add_service(AdminServer::new(AdminService { admin: admin.clone() }));
        // grpc.health.v1: every service this server runs, and "" for the server as a whole, SERVING
        // while its storage serves and until shutdown begins (then NOT_SERVING, so that load
        // balancers drain it).
        let (reporter, health_service) = tonic_health::server::health_reporter();
        report_health(&reporter, &served, &health).await;
        router = router.add_service(health_service);
        let probing = {
            let (reporter, served, health, interval) = (reporter.clone(), served.clone(), health.clone(), self.health_probe_interval);
            tokio::spawn(async move {
                loop {
                    if health.probe_all().await {
                        report_health(&reporter, &served, &health).await;
                    }
                    tokio::time::sleep(interval).await;
                }
            })
        };
        let http_stop = Arc::new(Notify::new());
        let http_task = self.http.map(|listener| {
            let exporter = Arc::new(Exporter::new(&self.metrics, self.stacks.clone(), self.scheduler.clone()));
            let state = crate::http::HttpState { admin: admin.clone(), exporter, authenticator: self.authenticator.clone() };
            let stop = http_stop.clone();
            tokio::spawn(crate::http::serve(listener, state, async move { stop.notified().await }))
        });
        let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: "the bound socket".into(), source })?;
        let mut local_bots = Vec::new();
        for (i, mut args) in self.bots.iter().cloned().enumerate() {
            args.server = format!("grpc://{addr}");
            args.bot_id.get_or_insert_with(|| format!("local-{}-{i}", std::process::id()));
            local_bots.push(tokio::spawn(async move {
                if let Err(e) = crate::bot::run(args, std::future::pending()).await {
                    tracing::error!("local bot {i} cannot run: {e}");
                }
            }).abort_handle());
        }
        // Without TCP_NODELAY, small responses wait for delayed acknowledgements (~40 ms each).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let signalled = Arc::new(Notify::new());
        let notify = signalled.clone();
        let scheduler = self.scheduler.clone();
        let stop_http = http_stop.clone();
        let serving = router.serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            probing.abort();
            for (name, _) in served.iter().chain(std::iter::once(&("", Vec::new()))) {
                reporter.set_service_status(*name, tonic_health::ServingStatus::NotServing).await;
            }
            stop_http.notify_one();
            // Bots' long polls would otherwise hold the shutdown for their whole wait.
            if let Some(scheduler) = scheduler {
                scheduler.close();
            }
            for bot in local_bots {
                bot.abort();
            }
            notify.notify_one();
        });
        // A client that keeps its connection open must not keep the server from stopping.
        let grace = async {
            signalled.notified().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = serving => result?,
            () = grace => tracing::warn!("calls still open {SHUTDOWN_GRACE:?} after the shutdown signal; stopping anyway"),
        }
        http_stop.notify_one();
        if let Some(task) = http_task {
            task.abort();
        }
        for disk in &self.disks {
            disk.flush()?;
        }
        Ok(())
    }
}
