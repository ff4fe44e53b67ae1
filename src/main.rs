//! The `strata` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strata::config::{Config, DEFAULT_CONFIG};
use strata::server::Server;

/// glibc's malloc took 17% of the server's CPU writing small blobs (each blob's buffer freed and
/// allocated again as the memory tier evicts and takes entries); mimalloc's per-thread free lists
/// cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "strata", version, about = "A remote build cache and execution service speaking REAPI v2", args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configured instances (the embedded all-in-one configuration without --config).
    Serve {
        /// A YAML configuration file (see config/ for examples).
        #[arg(long)]
        config: Option<PathBuf>,
        /// HOST:PORT to listen on, overriding the configuration.
        #[arg(long)]
        listen: Option<String>,
        /// Directory for the disk tiers, overriding the configuration's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HOST:PORT for the HTTP listener (metrics, status page, health), overriding the
        /// configuration's http.listen.
        #[arg(long)]
        http_listen: Option<String>,
    },
    /// Show what a running server holds and does: instances, tiers, hit ratios, queue, bots.
    Status(strata::admin::client::Target),
    /// Operator actions on a running server (the admin API).
    Admin {
        #[command(flatten)]
        target: strata::admin::client::Target,
        #[command(subcommand)]
        command: strata::admin::client::AdminCommand,
    },
    /// Drive a REAPI endpoint (Strata or another server) with load and report throughput and latency.
    Bench(strata::bench::BenchArgs),
    /// Run actions for a remote execution server (Remote Workers API bot).
    Bot(strata::bot::BotArgs),
    /// Start commands for a root bot, as the user its actions run as (started by the bot).
    #[command(name = strata::bot::spawner::SUBCOMMAND, hide = true)]
    Spawner,
}

/// Logs to stderr: `STRATA_LOG` filters (default `info`), `STRATA_LOG_FORMAT=json` gives one JSON
/// object per line, and colours are used only when stderr is a terminal (never in a log file).
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("STRATA_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        Ok("text") | Err(_) => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            logs.with_ansi(std::io::stderr().is_terminal()).init();
            tracing::warn!("STRATA_LOG_FORMAT={other:?} is not `text` or `json`; logging text");
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    if let Command::Spawner = cli.command {
        // No async runtime: it starts processes and waits for them, a thread each.
        return match strata::bot::spawner::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("strata spawner: {message}");
                ExitCode::FAILURE
            }
        };
    }
    // A root bot (`bot`, or one `serve` runs) starts its actions through this binary's spawner.
    if let Ok(exe) = std::env::current_exe() {
        strata::bot::spawner::set_program(exe);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { config, listen, data_dir, http_listen } => runtime.block_on(serve(config, listen, data_dir, http_listen)),
        Command::Status(target) => runtime.block_on(async { strata::admin::client::status(&target).await.map(|out| print!("{out}")).map_err(|e| e.to_string()) }),
        Command::Admin { target, command } => runtime.block_on(async {
            strata::admin::client::admin(&target, &command).await.map(|out| print!("{out}")).map_err(|e| e.to_string())
        }),
        Command::Bench(args) => runtime.block_on(bench(args)),
        Command::Bot(mut args) => runtime.block_on(async {
            args.spawner = strata::bot::spawner::program().map(PathBuf::from);
            strata::bot::run(args, shutdown_signal()).await.map_err(|e| e.to_string())
        }),
        Command::Spawner => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("strata: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Option<PathBuf>, listen: Option<String>, data_dir: Option<PathBuf>, http_listen: Option<String>) -> Result<(), String> {
    let shutdown = shutdown_signal();
    let mut config = match &config {
        Some(path) => Config::load(path),
        None => Config::parse(DEFAULT_CONFIG, "the embedded default configuration"),
    }
    .map_err(|e| e.to_string())?;
    if let Some(listen) = listen {
        config.listen = listen;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = http_listen {
        config.http = Some(strata::config::HttpConfig { listen });
    }
    let mut server = Server::build(&config).await.map_err(|e| e.to_string())?;
    let listener = Server::bind(&config.listen).await.map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if let Some(http) = &config.http {
        let http_listener = Server::bind(&http.listen).await.map_err(|e| format!("http.listen: {e}"))?;
        let http_addr = http_listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("HTTP on http://{http_addr}: status page /, /metrics, /healthz, /readyz");
        server = server.with_http(http_listener);
    }
    tracing::info!(%addr, data_dir = %config.data_dir.display(), "strata serving");
    for line in config.summary() {
        tracing::info!("{line}");
    }
    server.serve(listener, shutdown).await.map_err(|e| e.to_string())?;
    tracing::info!("strata stopped cleanly");
    Ok(())
}

async fn bench(args: strata::bench::BenchArgs) -> Result<(), String> {
    let json = args.json;
    let report = strata::bench::run(args).await.map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives between binding the listener and serving must stop
/// the server cleanly rather than kill it with the default action. Call it inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).and_then(|term| Ok((term, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        match handlers {
            Ok((mut term, mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing calls in flight");
    }
}
