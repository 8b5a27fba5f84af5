//! A harness for tests that run the `shieldwall` binary as real processes on loopback.
//!
//! Ports come from the OS at run time; every wait is a bounded loop on an observable
//! condition; every process started is killed by PID when the harness is dropped, and on a
//! failing test the replicas' logs are printed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shieldwall_core::Principal;
use shieldwall_crypto::{client_id, KeyPair, NodeAuth};
use shieldwall_kv::{KvOp, KvReply, SetCondition};
use shieldwall_node::{Client, ClientOptions, ClusterConfig, ReplicaStatus};
use shieldwall_wire::{handshake_signing_bytes, Decoder, Frame, Hello, Proof, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shieldwall")
}

/// Free loopback ports, chosen by the OS.
pub fn free_ports(count: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Poll `cond` every 20 ms until it holds; panic with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_for_every(what, timeout, Duration::from_millis(20), cond)
}

/// Poll `cond` every `interval` (for conditions that are costly to observe, such as a
/// command run in a container) until it holds; panic with `what` after `timeout`.
pub fn wait_for_every(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(interval);
    }
}

/// A cluster of replica processes.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub cluster: ClusterConfig,
    pub procs: Vec<Option<Child>>,
    pub extra: Vec<Child>,
    pub rt: tokio::runtime::Runtime,
}

impl TestCluster {
    /// Generate keys and a cluster file (`keygen`) for `n` replicas; starts nothing.
    pub fn new(n: u32, fault_model: &str, protocol: &[&str]) -> TestCluster {
        TestCluster::with_durability(n, fault_model, "memory", protocol)
    }

    /// As [`TestCluster::new`], with `durability` (`memory` or `durable`) in the cluster file.
    pub fn with_durability(
        n: u32,
        fault_model: &str,
        durability: &str,
        protocol: &[&str],
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(2 * n as usize);
        let addrs: Vec<String> = (0..n as usize)
            .map(|i| format!("127.0.0.1:{}", ports[2 * i]))
            .collect();
        let http: Vec<String> = (0..n as usize)
            .map(|i| format!("127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let mut cmd = Command::new(bin());
        cmd.args([
            "keygen",
            "--replicas",
            &n.to_string(),
            "--fault-model",
            fault_model,
            "--durability",
            durability,
        ])
        .arg("--out")
        .arg(dir.path())
        .args([
            "--addresses",
            &addrs.join(","),
            "--http-addresses",
            &http.join(","),
        ]);
        for p in protocol {
            cmd.args(["--protocol", p]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config_path = dir.path().join("cluster.toml");
        let cluster = ClusterConfig::load(&config_path).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        TestCluster {
            dir,
            config_path,
            cluster,
            procs: (0..n).map(|_| None).collect(),
            extra: Vec::new(),
            rt,
        }
    }

    pub fn n(&self) -> u32 {
        self.cluster.n()
    }

    pub fn log_path(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("replica-{i}.log"))
    }

    /// Start replica `i` (appending to its log).
    pub fn start(&mut self, i: u32) {
        assert!(self.procs[i as usize].is_none(), "replica {i} already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let child = Command::new(bin())
            .args(["node", "--id", &i.to_string()])
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,shieldwall_node=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs[i as usize] = Some(child);
    }

    /// Start every replica and wait until they all answer on their status endpoint.
    pub fn start_all(&mut self) {
        for i in 0..self.n() {
            self.start(i);
        }
        let all: Vec<u32> = (0..self.n()).collect();
        self.wait_ready(&all);
    }

    /// `kill -9` replica `i`.
    pub fn kill(&mut self, i: u32) {
        let mut child = self.procs[i as usize].take().expect("replica not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// `kill -9` every running replica at once (all signals sent before any is reaped).
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> = self.procs.iter_mut().filter_map(Option::take).collect();
        for child in &mut children {
            child.kill().unwrap();
        }
        for mut child in children {
            child.wait().unwrap();
        }
    }

    /// Wait up to `timeout` for replica `i` to exit by itself; its exit status.
    pub fn wait_exit(&mut self, i: u32, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        let child = self.procs[i as usize]
            .as_mut()
            .expect("replica not running");
        wait_for("the replica to exit", timeout, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        self.procs[i as usize] = None;
        status.unwrap()
    }

    /// Replica `i`'s data directory (`node`'s default: `data-<i>` next to the cluster file).
    pub fn data_dir(&self, i: u32) -> PathBuf {
        self.dir.path().join(format!("data-{i}"))
    }

    /// Replica `i`'s log so far, without terminal colour codes.
    pub fn log(&self, i: u32) -> String {
        let raw = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let mut plain = String::with_capacity(raw.len());
        let mut rest = raw.as_str();
        while let Some(at) = rest.find('\x1b') {
            plain.push_str(&rest[..at]);
            rest = &rest[at..];
            rest = rest.find('m').map_or("", |end| &rest[end + 1..]);
        }
        plain.push_str(rest);
        plain
    }

    pub fn pid(&self, i: u32) -> u32 {
        self.procs[i as usize].as_ref().unwrap().id()
    }

    pub fn wait_ready(&self, ids: &[u32]) {
        wait_for(
            "replicas to answer /status",
            Duration::from_secs(30),
            || ids.iter().all(|i| self.status(*i).is_some()),
        );
    }

    fn http(&self, i: u32, path: &str) -> Option<String> {
        let addr = self.cluster.replicas[i as usize].http.clone()?;
        self.rt
            .block_on(shieldwall_node::http::get(
                &addr,
                path,
                Duration::from_secs(2),
            ))
            .ok()
    }

    pub fn status(&self, i: u32) -> Option<ReplicaStatus> {
        serde_json::from_str(&self.http(i, "/status")?).ok()
    }

    pub fn metrics(&self, i: u32) -> String {
        self.http(i, "/metrics").unwrap_or_default()
    }

    /// The sum of every sample of metric `name` whose labels contain `label` (e.g.
    /// `reason="bad_signature"`; empty: all).
    pub fn metric(&self, i: u32, name: &str, label: &str) -> f64 {
        self.metrics(i)
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Resident memory of replica `i`, in KiB.
    pub fn rss_kib(&self, i: u32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i))).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// A connected client with client key `key`.
    pub fn client(&self, key: u64) -> Client {
        let mut options = ClientOptions::from_key_file(&self.cluster, key).unwrap();
        options.timeout = Duration::from_secs(30);
        self.rt
            .block_on(Client::connect(&self.cluster, options))
            .unwrap()
    }

    /// Start the RESP gateway as a process with client key `key`; returns its address.
    pub fn start_gateway(&mut self, key: u64) -> String {
        let port = free_ports(1)[0];
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(self.dir.path().join("gateway.log")).unwrap();
        let child = Command::new(bin())
            .args([
                "kv-gateway",
                "--listen",
                &addr,
                "--client-key",
                &key.to_string(),
            ])
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.extra.push(child);
        wait_for(
            "the gateway to accept connections",
            Duration::from_secs(30),
            || std::net::TcpStream::connect(&addr).is_ok(),
        );
        addr
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.procs.iter_mut().flatten().chain(self.extra.iter_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for i in 0..self.n() {
                let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("---- replica {i} log (last 40 lines) ----");
                for l in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

pub fn set(key: &str, value: &str) -> Vec<u8> {
    KvOp::Set {
        key: key.into(),
        value: value.into(),
        condition: SetCondition::Always,
        get: false,
    }
    .encode()
}

pub fn get(key: &str) -> Vec<u8> {
    KvOp::Get { key: key.into() }.encode()
}

pub fn incr(key: &str) -> Vec<u8> {
    KvOp::IncrBy {
        key: key.into(),
        delta: 1,
    }
    .encode()
}

pub fn reply(bytes: &[u8]) -> KvReply {
    KvReply::decode(bytes).unwrap()
}

/// A raw connection that completed the handshake as `me` (holding `keys`), for tests that
/// speak the wire protocol directly (a fake replica, a misbehaving client).
#[derive(Debug)]
pub struct RawConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl RawConn {
    pub async fn connect(
        cluster: &ClusterConfig,
        replica: u32,
        me: Principal,
        keys: KeyPair,
    ) -> Result<RawConn, String> {
        let auth = NodeAuth::new(me, keys, cluster.keyring());
        let mut stream = TcpStream::connect(&cluster.replicas[replica as usize].address)
            .await
            .map_err(|e| e.to_string())?;
        let nonce = [7u8; 32];
        let hello = Frame::Hello(Hello {
            cluster: cluster.cluster_id,
            principal: me,
            nonce,
        });
        stream
            .write_all(&hello.encode())
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = RawConn {
            stream,
            buf: BytesMut::new(),
        };
        let peer_nonce = match conn
            .next()
            .await
            .map_err(|e| format!("reading hello: {e}"))?
        {
            Frame::Hello(h) => h.nonce,
            other => return Err(format!("expected hello, got {other:?}")),
        };
        // We dialled: we prove ourselves first, then check the replica's proof.
        let acceptor = Principal::Replica(replica);
        let bytes = |role| {
            handshake_signing_bytes(&cluster.cluster_id, role, me, acceptor, &nonce, &peer_nonce)
        };
        let sig = shieldwall_core::Authenticator::sign(&auth, &bytes(Role::Dialer));
        conn.send(&Frame::Proof(Proof { sig })).await?;
        match conn
            .next()
            .await
            .map_err(|e| format!("reading proof: {e}"))?
        {
            Frame::Proof(p) => {
                let ok = shieldwall_core::Authenticator::verify(
                    &auth,
                    acceptor,
                    &bytes(Role::Acceptor),
                    &p.sig,
                );
                if !ok {
                    return Err("the replica's proof does not verify".into());
                }
            }
            Frame::Refused(r) => return Err(format!("refused: {}", r.reason)),
            other => return Err(format!("expected proof, got {other:?}")),
        }
        conn.send(&Frame::Accepted).await?;
        Ok(conn)
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), String> {
        self.send_raw(&frame.encode()).await
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| e.to_string())
    }

    /// The next frame, within 10 s.
    pub async fn next(&mut self) -> Result<Frame, String> {
        let dec = Decoder::new(16 << 20);
        let run = async {
            loop {
                if let Some(f) = dec.decode(&mut self.buf).map_err(|e| e.to_string())? {
                    return Ok(f);
                }
                let n = self
                    .stream
                    .read_buf(&mut self.buf)
                    .await
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed".to_string());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| "no frame within 10 s".to_string())?
    }

    /// Whether the other side closed the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let mut b = [0u8; 4096];
        let run = async {
            loop {
                match self.stream.read(&mut b).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(timeout, run).await.unwrap_or(false)
    }
}

/// The key pair of replica `i` or client key `i` from the cluster directory.
pub fn replica_keys(c: &TestCluster, i: u32) -> KeyPair {
    KeyPair::read_file(&c.cluster.replica_key_path(i), Principal::Replica(i)).unwrap()
}

pub fn client_keys(c: &TestCluster, key: u64) -> KeyPair {
    KeyPair::read_file(
        &c.cluster.client_key_path(key),
        Principal::Client(client_id(key, 0)),
    )
    .unwrap()
}
