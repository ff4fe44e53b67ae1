//! The physical limits. `baseline`: the same bytes as `write-large`, pushed over raw TCP connections
//! on 127.0.0.1 and hashed on arrival with the same digest function, with no protocol at all. A
//! server's figure divided by this one says how much of the machine it uses. `baseline-spawn`: the
//! command `execute` runs (`true`), started and waited for with no protocol: what process start
//! itself costs here, which bounds any server's execute.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use strata_backends::DigestFunction;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::scenarios::Scenario;
use super::{BenchError, Done, Plan};

const CHUNK: usize = 1 << 20;

pub struct Baseline {
    body: Bytes,
    connections: Vec<Mutex<TcpStream>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Baseline {
    pub async fn start(plan: &Arc<Plan>) -> Result<Baseline, BenchError> {
        let io = |e: std::io::Error| BenchError::Setup(format!("raw TCP baseline: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let function = plan.function;
        let acceptor = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(receive(socket, function));
            }
        });
        let mut connections = Vec::new();
        for _ in 0..plan.args.concurrency {
            let socket = TcpStream::connect(addr).await.map_err(io)?;
            socket.set_nodelay(true).map_err(io)?;
            connections.push(Mutex::new(socket));
        }
        let body = Bytes::from((0..plan.large_size).map(|i| (i * 31) as u8).collect::<Vec<u8>>());
        Ok(Baseline { body, connections, acceptor })
    }
}

/// The receiving side: length, bytes (hashed as they arrive), then a one-byte acknowledgement.
async fn receive(mut socket: TcpStream, function: DigestFunction) {
    let _ = socket.set_nodelay(true);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let Ok(len) = socket.read_u64().await else { return };
        let mut hasher = function.hasher();
        let mut left = len;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let Ok(n) = socket.read(&mut buf[..want]).await else { return };
            if n == 0 {
                return;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        std::hint::black_box(hasher.finish());
        if socket.write_u8(1).await.is_err() {
            return;
        }
    }
}

#[async_trait]
impl Scenario for Baseline {
    async fn op(&self, worker: usize, _seq: u64) -> Result<Done, String> {
        let mut socket = self.connections[worker].lock().await;
        socket.write_u64(self.body.len() as u64).await.map_err(|e| e.to_string())?;
        for chunk in self.body.chunks(CHUNK) {
            socket.write_all(chunk).await.map_err(|e| e.to_string())?;
        }
        socket.read_u8().await.map_err(|e| e.to_string())?;
        Ok(Done::new(self.body.len() as u64, 1))
    }

    async fn finish(&self) {
        self.acceptor.abort();
    }
}

/// Starts `true` and waits for it, `concurrency` at a time.
pub struct SpawnBaseline;

#[async_trait]
impl Scenario for SpawnBaseline {
    async fn op(&self, _worker: usize, _seq: u64) -> Result<Done, String> {
        let status = tokio::process::Command::new("true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .map_err(|e| format!("cannot run true: {e}"))?;
        if !status.success() {
            return Err(format!("true exited with {status}"));
        }
        Ok(Done::new(0, 1))
    }
}
