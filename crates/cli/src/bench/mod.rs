//! `shieldwall bench`: a load generator against a local cluster it starts (or a running one),
//! with latency measured per request at the client, and the results as a table, CSV, JSON and
//! (for `--sweep`) a throughput-latency plot.

mod load;
mod plot;
mod probe;
mod report;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shieldwall_core::{Durability, FaultModel};
use shieldwall_crypto::CLIENT_LANES;
use shieldwall_kv::{KvOp, SetCondition};
use shieldwall_node::{AuthMode, Client, ClientOptions, ClusterConfig};

use crate::local::{LocalCluster, LocalSpec};
use report::{Latency, ProcessCpu, Report, RunResult, Setup};

/// How client requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RequestAuth {
    /// An Ed25519 signature per request (what the client library does).
    Signature,
    /// A MAC vector (one blake3 MAC per replica); the cluster must accept them
    /// (`request_macs = true`, set automatically for a cluster the bench starts).
    Mac,
}

impl RequestAuth {
    fn mode(self) -> AuthMode {
        match self {
            RequestAuth::Signature => AuthMode::Signature,
            RequestAuth::Mac => AuthMode::Mac,
        }
    }
}

/// What to run.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Replicas of the cluster to start [default: 4].
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Fault model of the cluster to start: byzantine (n >= 3f+1) or crash (n >= 2f+1)
    /// [default: byzantine].
    #[arg(long, visible_alias = "fault-model")]
    pub mode: Option<FaultModel>,
    /// Durability of the cluster to start: memory or durable (write-ahead log in a temporary
    /// directory; set TMPDIR to choose its disk) [default: memory].
    #[arg(long)]
    pub durability: Option<Durability>,
    /// Protocol setting of the cluster to start, `name=value`, repeatable (as for keygen).
    #[arg(long = "protocol", value_name = "NAME=VALUE")]
    pub protocol: Vec<String>,
    /// Use the running cluster of this cluster file instead of starting one. Its client keys
    /// `--first-key` onwards are used, one per client; no other process may use them meanwhile.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Index of the first client key used (client i uses key first + i).
    #[arg(long, default_value_t = 0)]
    pub first_key: u64,
    /// Clients, each with its own client key and connections [default: 1].
    #[arg(long)]
    pub clients: Option<u32>,
    /// Closed loop: requests each client keeps outstanding. Open loop: the most each client
    /// has in flight.
    #[arg(long, default_value_t = 16)]
    pub depth: u32,
    /// Open loop at this many operations per second over all clients (latency counts from
    /// each operation's scheduled start). Without it: closed loop.
    #[arg(long, value_name = "OPS_PER_S")]
    pub rate: Option<f64>,
    /// Bytes of each SET's value.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Fraction of operations that are GETs (unordered reads), 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Request authentication: signature (Ed25519) or mac (a MAC per replica; needs a
    /// cluster with `request_macs = true`, which a cluster the bench starts gets).
    #[arg(long, value_enum, default_value_t = RequestAuth::Signature)]
    pub auth: RequestAuth,
    /// Measured time of each run (`30s`, `2m`).
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Load before each run's measured time, not measured.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub warmup: Duration,
    /// Directory for results.csv, results.json and plots [default: target/bench/<UTC time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run once per client count (`1,2,4,8`) and plot throughput against latency.
    #[arg(long, value_delimiter = ',', value_name = "CLIENTS,...")]
    pub sweep: Vec<u32>,
    /// Run every client count this many times, each time on a freshly started cluster (a
    /// `--cluster` is reused), and report the median run of each (`medians.csv`, the table's
    /// second part, `medians` in results.json; a sweep's plot draws the medians).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Operation timeout in milliseconds (a timed-out operation counts as an error).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Seed of the operation mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Where the load goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A cluster `bench` starts and stops.
    Local(LocalSpec),
    /// A running cluster.
    Cluster(PathBuf),
}

/// Checked options.
#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    /// Client count of each run.
    pub points: Vec<u32>,
    /// Runs of every client count (`--repeat`).
    pub repeat: u32,
    pub workload: load::Workload,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub first_key: u64,
    pub out: PathBuf,
    pub auth: RequestAuth,
}

/// Largest `--depth`: the client library's lanes times a generous window.
const DEPTH_MAX: u32 = 16_384;
/// Largest `--clients` (each is a set of connections to every replica).
const CLIENTS_MAX: u32 = 1024;
/// Largest `--repeat`.
const REPEAT_MAX: u32 = 100;

impl Plan {
    /// Check the options; `now` names the default output directory.
    pub fn from_args(args: &BenchArgs, now: SystemTime) -> Result<Plan, String> {
        let target = match &args.cluster {
            Some(file) => {
                let given: Vec<&str> = [
                    ("--replicas", args.replicas.is_some()),
                    ("--mode", args.mode.is_some()),
                    ("--durability", args.durability.is_some()),
                    ("--protocol", !args.protocol.is_empty()),
                ]
                .into_iter()
                .filter_map(|(flag, set)| set.then_some(flag))
                .collect();
                if !given.is_empty() {
                    return Err(format!(
                        "{} describe a cluster to start; with --cluster the cluster file \
                         decides them",
                        given.join(", ")
                    ));
                }
                Target::Cluster(file.clone())
            }
            None => {
                let replicas = args.replicas.unwrap_or(4);
                if replicas == 0 {
                    return Err("--replicas must be at least 1".into());
                }
                Target::Local(LocalSpec {
                    replicas,
                    fault_model: args.mode.unwrap_or(FaultModel::Byzantine),
                    durability: args.durability,
                    dir: None,
                    protocol: match args.auth {
                        RequestAuth::Mac => {
                            [args.protocol.as_slice(), &["request_macs=true".into()]].concat()
                        }
                        RequestAuth::Signature => args.protocol.clone(),
                    },
                    client_keys: 0,
                })
            }
        };
        let points = match (args.clients, args.sweep.is_empty()) {
            (Some(_), false) => {
                return Err("give --clients or --sweep (a list of client counts), not both".into())
            }
            (c, true) => vec![c.unwrap_or(1)],
            (None, false) => args.sweep.clone(),
        };
        if let Some(bad) = points.iter().find(|&&c| c == 0 || c > CLIENTS_MAX) {
            return Err(format!(
                "client counts must be in 1..={CLIENTS_MAX}, got {bad}"
            ));
        }
        let max_clients = points.iter().copied().max().unwrap_or(1);
        if !(1..=DEPTH_MAX).contains(&args.depth) {
            return Err(format!("--depth must be in 1..={DEPTH_MAX}"));
        }
        if let Some(r) = args.rate {
            if !(r.is_finite() && r > 0.0 && r <= 10_000_000.0) {
                return Err(format!(
                    "--rate must be a positive number of operations per second (at most \
                     10000000), got {r}"
                ));
            }
        }
        if !(0.0..=1.0).contains(&args.read_ratio) {
            return Err(format!(
                "--read-ratio must be between 0 and 1, got {}",
                args.read_ratio
            ));
        }
        if args.duration.is_zero() {
            return Err("--duration must be longer than 0".into());
        }
        if !(1..=REPEAT_MAX).contains(&args.repeat) {
            return Err(format!("--repeat must be in 1..={REPEAT_MAX}"));
        }
        if args.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        let target = match target {
            Target::Local(mut spec) => {
                spec.client_keys = u32::try_from(args.first_key)
                    .ok()
                    .and_then(|k| k.checked_add(max_clients))
                    .ok_or("--first-key is too large")?;
                Target::Local(spec)
            }
            t => t,
        };
        let timeout = Duration::from_millis(args.timeout_ms);
        Ok(Plan {
            target,
            points,
            repeat: args.repeat,
            workload: load::Workload {
                payload: args.payload,
                read_ratio: args.read_ratio,
                depth: args.depth,
                rate: args.rate,
                seed: args.seed,
                drain: timeout + Duration::from_secs(2),
            },
            duration: args.duration,
            warmup: args.warmup,
            timeout,
            first_key: args.first_key,
            out: args
                .out
                .clone()
                .unwrap_or_else(|| Path::new("target/bench").join(utc_stamp(now))),
            auth: args.auth,
        })
    }

    /// Check the plan against the cluster: enough client keys, operations within its limit.
    fn check_cluster(&self, cluster: &ClusterConfig) -> Result<(), String> {
        if self.auth == RequestAuth::Mac && !cluster.protocol.request_macs {
            return Err(
                "--auth mac: the cluster does not accept MAC-authenticated requests \
                 (set request_macs = true in its [protocol] table, or keygen --protocol \
                 request_macs=true)"
                    .into(),
            );
        }
        let need = self.first_key + u64::from(self.points.iter().copied().max().unwrap_or(1));
        if (cluster.clients.len() as u64) < need {
            return Err(format!(
                "the cluster file lists {} client keys; {} clients from key {} need {need} \
                 (keygen --clients)",
                cluster.clients.len(),
                need - self.first_key,
                self.first_key
            ));
        }
        let probe = KvOp::Set {
            key: b"bench:1023:16383:1023".to_vec(),
            value: vec![0; self.workload.payload],
            condition: SetCondition::Always,
            get: false,
        }
        .encode();
        let max = cluster.protocol.request_bytes_max as usize;
        if probe.len() > max {
            return Err(format!(
                "--payload {}: a SET of that size is {} bytes, over the cluster's \
                 request_bytes_max of {max}",
                self.workload.payload,
                probe.len()
            ));
        }
        Ok(())
    }
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let plan = Plan::from_args(&args, SystemTime::now())?;
    let rt = crate::runtime()?;
    let mut runs = Vec::new();
    let mut setup = None;
    let mut result = Ok(());
    for repeat in 1..=plan.repeat {
        if plan.repeat > 1 {
            eprintln!("bench: run {repeat} of {}", plan.repeat);
        }
        if let Err(e) = run_repeat(&plan, &rt, repeat, &mut setup, &mut runs) {
            result = Err(e);
            break;
        }
    }
    drop(rt);
    if let (Some(setup), false) = (setup, runs.is_empty()) {
        let title = format!(
            "shieldwall {} n={}, {} B values, {:.0}% reads",
            setup.fault_model,
            setup.replicas,
            setup.payload_bytes,
            setup.read_ratio * 100.0
        );
        let medians = report::medians(&runs);
        let report = Report {
            setup,
            runs,
            medians,
        };
        print!("{}", report.table());
        write_results(&plan, &report, &title)?;
    }
    result
}

/// Every client count once, on a cluster started for this repetition (or the given one);
/// describes the setup on the first call.
fn run_repeat(
    plan: &Plan,
    rt: &tokio::runtime::Runtime,
    repeat: u32,
    setup: &mut Option<Setup>,
    runs: &mut Vec<RunResult>,
) -> Result<(), String> {
    let (local, cluster, cluster_name) = match &plan.target {
        Target::Local(spec) => {
            let local = LocalCluster::start(spec)?;
            let cluster = local.cluster.clone();
            (Some(local), cluster, "local".to_string())
        }
        Target::Cluster(file) => (
            None,
            ClusterConfig::load(file).map_err(|e| e.to_string())?,
            file.display().to_string(),
        ),
    };
    let result = (|| {
        plan.check_cluster(&cluster)?;
        if setup.is_none() {
            *setup = Some(describe(plan, &cluster, cluster_name, local.is_some())?);
        }
        rt.block_on(async {
            tokio::select! {
                r = async {
                    if let Some(l) = &local {
                        l.wait_ready().await?;
                    }
                    for (i, &clients) in plan.points.iter().enumerate() {
                        let mut label = format!("{clients} clients");
                        if plan.points.len() > 1 {
                            label = format!("[{}/{}] {label}", i + 1, plan.points.len());
                        }
                        if plan.repeat > 1 {
                            label = format!("run {repeat}/{} {label}", plan.repeat);
                        }
                        let mut run =
                            bench_one(plan, &cluster, local.as_ref(), clients, &label).await?;
                        run.repeat = repeat;
                        if let Some(e) = &run.first_error {
                            eprintln!("bench: {label}: {} errors, the first: {e}", run.errors);
                        }
                        runs.push(run);
                    }
                    Ok::<(), String>(())
                } => r,
                _ = crate::shutdown_signal() => Err("interrupted".to_string()),
            }
        })
    })();
    if let Some(l) = &local {
        l.stop(Duration::from_secs(5));
    }
    result
}

/// Create the output directory and say what is measured.
fn describe(
    plan: &Plan,
    cluster: &ClusterConfig,
    cluster_name: String,
    started_here: bool,
) -> Result<Setup, String> {
    std::fs::create_dir_all(&plan.out)
        .map_err(|e| format!("cannot create {}: {e}", plan.out.display()))?;
    let p = &cluster.protocol;
    let setup = Setup {
        version: env!("CARGO_PKG_VERSION").to_string(),
        cluster: cluster_name,
        replicas: cluster.n(),
        fault_model: p.fault_model.to_string(),
        durability: p.durability.to_string(),
        auth: match plan.auth {
            RequestAuth::Signature => "signature",
            RequestAuth::Mac => "mac",
        }
        .into(),
        payload_bytes: plan.workload.payload,
        read_ratio: plan.workload.read_ratio,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    eprintln!(
        "bench: {} replicas, {} mode, {} durability{}; {} B values, {:.0}% reads, {}",
        setup.replicas,
        setup.fault_model,
        setup.durability,
        if started_here { " (started here)" } else { "" },
        setup.payload_bytes,
        setup.read_ratio * 100.0,
        match plan.workload.rate {
            Some(r) => format!("open loop at {r} ops/s"),
            None => format!(
                "closed loop, {} outstanding per client",
                plan.workload.depth
            ),
        }
    );
    Ok(setup)
}

fn write_results(plan: &Plan, report: &Report, title: &str) -> Result<(), String> {
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = plan.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    let csv = write("results.csv", &report.csv())?;
    let json = write("results.json", &report.json()?)?;
    println!("results: {}", csv.display());
    println!("         {}", json.display());
    if let Some(medians) = report.medians_csv() {
        println!("         {}", write("medians.csv", &medians)?.display());
    }
    if plan.points.len() > 1 {
        let svg = plan.out.join("throughput-latency.svg");
        // With repetitions, each client count's median run.
        let plotted: Vec<RunResult> = if report.medians.is_empty() {
            report.runs.clone()
        } else {
            report
                .medians
                .iter()
                .filter_map(|m| {
                    report
                        .runs
                        .iter()
                        .find(|r| r.clients == m.clients && r.repeat == m.median_repeat)
                        .cloned()
                })
                .collect()
        };
        plot::throughput_latency_svg(&svg, title, &plotted)?;
        println!("plot:    {}", svg.display());
    }
    Ok(())
}

/// CPU ticks of each watched process now; a process that is gone reads as `None`.
fn cpu_sample(processes: &[(String, u32)]) -> Vec<Option<u64>> {
    processes
        .iter()
        .map(|(_, pid)| probe::cpu_ticks(*pid).ok())
        .collect()
}

/// One run with `clients` clients.
async fn bench_one(
    plan: &Plan,
    cluster: &ClusterConfig,
    local: Option<&LocalCluster>,
    clients: u32,
    label: &str,
) -> Result<RunResult, String> {
    let w = &plan.workload;
    // Enough lanes for `depth` requests in flight under the per-lane window.
    let window = u64::from(cluster.protocol.client_pending_max.max(1));
    let lanes = u64::from(w.depth).div_ceil(window).clamp(1, CLIENT_LANES) as u32;
    let mut connected = Vec::with_capacity(clients as usize);
    for c in 0..u64::from(clients) {
        let mut options =
            ClientOptions::from_key_file(cluster, plan.first_key + c).map_err(|e| e.to_string())?;
        options.lanes = lanes;
        options.timeout = plan.timeout;
        options.auth_mode = plan.auth.mode();
        connected.push(
            Client::connect(cluster, options)
                .await
                .map_err(|e| format!("client {c}: {e}"))?,
        );
    }
    let mut processes = vec![("bench".to_string(), std::process::id())];
    if let Some(l) = local {
        processes.extend(
            l.pids()
                .into_iter()
                .map(|(id, pid)| (format!("replica-{id}"), pid)),
        );
    }
    let template = report::new_histogram()?;
    let live = Arc::new(load::Live::default());
    let load_start = Instant::now();
    let window = load::Window {
        load_start,
        start: load_start + plan.warmup,
        end: load_start + plan.warmup + plan.duration,
    };
    let mut load = tokio::spawn(load::run(
        connected,
        w.clone(),
        window,
        live.clone(),
        template,
    ));
    let mut progress = Progress::new(label, plan.warmup + plan.duration);
    let mut before = None;
    let mut after = None;
    let mut tick = tokio::time::interval(progress.every());
    let tally = loop {
        tokio::select! {
            t = &mut load => break t.map_err(|e| format!("load generator failed: {e}"))?,
            _ = tick.tick() => {
                let now = Instant::now();
                if before.is_none() && now >= window.start {
                    before = Some((cpu_sample(&processes), probe::commit_counters(cluster).await));
                }
                if after.is_none() && now >= window.end {
                    after = Some((cpu_sample(&processes), probe::commit_counters(cluster).await));
                }
                progress.show(now - load_start, now < window.start, &live);
                // Sample at the window's edges rather than at the next tick.
                let next = [window.start, window.end]
                    .into_iter()
                    .filter(|&e| e > now)
                    .min()
                    .map_or(progress.every(), |e| (e - now).min(progress.every()));
                tick.reset_after(next);
            }
        }
    };
    progress.finish();
    // The open loop may finish just before the window's last tick: take the last sample now.
    if after.is_none() {
        tokio::time::sleep_until(tokio::time::Instant::from_std(window.end)).await;
        after = Some((
            cpu_sample(&processes),
            probe::commit_counters(cluster).await,
        ));
    }
    let ops = tally.ops();
    let (cpu, batch_size_mean) = match (before, after) {
        (Some((cpu0, m0)), Some((cpu1, m1))) => {
            let hz = probe::ticks_per_second();
            let cpu = processes
                .iter()
                .zip(cpu0.iter().zip(&cpu1))
                .filter_map(|((name, pid), (a, b))| {
                    let ticks = b.as_ref()?.checked_sub(*a.as_ref()?)?;
                    Some(ProcessCpu::new(name.clone(), *pid, ticks, hz, ops))
                })
                .collect();
            (cpu, probe::mean_batch_size(&m0, &m1))
        }
        _ => (Vec::new(), None),
    };
    let duration_s = plan.duration.as_secs_f64();
    Ok(RunResult {
        clients,
        repeat: 1,
        depth: w.depth,
        rate_ops_s: w.rate,
        duration_s,
        ops,
        reads: tally.reads,
        writes: tally.writes,
        errors: tally.errors,
        throughput_ops_s: ops as f64 / duration_s,
        latency: Latency::from_histogram(&tally.hist),
        batch_size_mean,
        cpu,
        first_error: tally.first_error,
    })
}

/// A progress bar on a terminal, a line per second otherwise (both on stderr).
struct Progress {
    label: String,
    total: Duration,
    bar: Option<indicatif::ProgressBar>,
    last: (Duration, u64),
    rate: f64,
}

impl Progress {
    fn new(label: &str, total: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {elapsed:>3}/{duration} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        Progress {
            label: label.to_string(),
            total,
            bar,
            last: (Duration::ZERO, 0),
            rate: 0.0,
        }
    }

    fn every(&self) -> Duration {
        if self.bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        }
    }

    fn show(&mut self, elapsed: Duration, warming: bool, live: &load::Live) {
        let done = live.completed.load(Ordering::Relaxed);
        let errors = live.errors.load(Ordering::Relaxed);
        let dt = (elapsed - self.last.0.min(elapsed)).as_secs_f64();
        if dt >= 0.5 {
            self.rate = done.saturating_sub(self.last.1) as f64 / dt;
            self.last = (elapsed, done);
        }
        let phase = if warming {
            "warm-up"
        } else if elapsed < self.total {
            "measuring"
        } else {
            "draining"
        };
        let msg = format!("{phase}: {:.0} ops/s, {errors} errors", self.rate);
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed.as_millis() as u64);
                bar.set_message(msg);
            }
            None => eprintln!(
                "bench: {} {:.0}s/{:.0}s {msg}",
                self.label,
                elapsed.as_secs_f64(),
                self.total.as_secs_f64()
            ),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::from_args(&cli.args, UNIX_EPOCH + Duration::from_secs(1_764_590_400))
    }

    #[test]
    fn defaults() {
        let p = plan(&[]).unwrap();
        assert_eq!(p.points, vec![1]);
        assert_eq!(p.repeat, 1);
        assert_eq!(p.workload.depth, 16);
        assert_eq!(p.workload.payload, 64);
        assert_eq!(p.workload.rate, None);
        assert_eq!(p.duration, Duration::from_secs(10));
        assert_eq!(p.warmup, Duration::from_secs(2));
        assert_eq!(p.out, Path::new("target/bench/20251201-120000"));
        match p.target {
            Target::Local(spec) => {
                assert_eq!(spec.replicas, 4);
                assert_eq!(spec.fault_model, FaultModel::Byzantine);
                assert_eq!(spec.client_keys, 1);
            }
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn options() {
        let p = plan(&[
            "--mode",
            "crash",
            "--replicas",
            "3",
            "--sweep",
            "1,2,8",
            "--depth",
            "4",
            "--rate",
            "500",
            "--read-ratio",
            "0.5",
            "--duration",
            "2s",
            "--warmup",
            "500ms",
            "--first-key",
            "2",
            "--repeat",
            "3",
        ])
        .unwrap();
        assert_eq!(p.points, vec![1, 2, 8]);
        assert_eq!(p.repeat, 3);
        assert_eq!(p.workload.rate, Some(500.0));
        assert_eq!(p.warmup, Duration::from_millis(500));
        match p.target {
            Target::Local(spec) => {
                assert_eq!((spec.replicas, spec.fault_model), (3, FaultModel::Crash));
                assert_eq!(spec.client_keys, 10);
            }
            t => panic!("{t:?}"),
        }
        let p = plan(&["--cluster", "c.toml"]).unwrap();
        assert_eq!(p.target, Target::Cluster("c.toml".into()));
    }

    #[test]
    fn rejected_options() {
        let both = plan(&["--cluster", "c.toml", "--replicas", "4", "--mode", "crash"]);
        assert!(both.unwrap_err().contains("--replicas, --mode"));
        assert!(plan(&["--clients", "2", "--sweep", "1,2"]).is_err());
        assert!(plan(&["--sweep", "1,0"]).is_err());
        assert!(plan(&["--repeat", "0"]).is_err());
        assert!(plan(&["--repeat", "101"]).is_err());
        assert!(plan(&["--depth", "0"]).is_err());
        assert!(plan(&["--rate", "0"]).is_err());
        assert!(plan(&["--rate", "-5"]).is_err());
        assert!(plan(&["--read-ratio", "1.5"]).is_err());
        assert!(plan(&["--duration", "0s"]).is_err());
        assert!(plan(&["--replicas", "0"]).is_err());
        assert!(plan(&["--auth", "rsa"]).is_err());
    }

    #[test]
    fn cluster_limits() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = shieldwall_core::Config::for_replicas(4, FaultModel::Byzantine);
        let addresses = (0..4)
            .map(|i| (format!("127.0.0.1:{}", 7000 + i), None))
            .collect();
        let cluster = crate::keygen::generate(protocol, addresses, 3, dir.path())
            .unwrap()
            .cluster;
        assert!(plan(&["--clients", "3"])
            .unwrap()
            .check_cluster(&cluster)
            .is_ok());
        let keys = plan(&["--clients", "2", "--first-key", "2"])
            .unwrap()
            .check_cluster(&cluster)
            .unwrap_err();
        assert!(keys.contains("lists 3 client keys"), "{keys}");
        let big = plan(&["--payload", "1000000"])
            .unwrap()
            .check_cluster(&cluster)
            .unwrap_err();
        assert!(big.contains("request_bytes_max"), "{big}");
        let macs = plan(&["--cluster", "c.toml", "--auth", "mac"])
            .unwrap()
            .check_cluster(&cluster)
            .unwrap_err();
        assert!(macs.contains("request_macs = true"), "{macs}");
    }

    #[test]
    fn mac_auth_turns_on_request_macs_in_a_started_cluster() {
        match plan(&["--auth", "mac", "--protocol", "pipeline_window=4"])
            .unwrap()
            .target
        {
            Target::Local(spec) => assert_eq!(
                spec.protocol,
                vec!["pipeline_window=4".to_string(), "request_macs=true".into()]
            ),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661)),
            "20000229-010101"
        );
    }
}
