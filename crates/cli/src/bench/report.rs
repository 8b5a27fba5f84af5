//! The results of `bench`: per-run numbers from the latency histogram and the probes, and
//! their table, CSV and JSON forms.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histograms record microseconds, from 1 µs to an hour, with 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>, String> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| format!("histogram: {e:?}"))
}

/// Latency summary of one run, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// The summary of a histogram of microseconds (all zero if it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// CPU time one process used in the measured window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessCpu {
    /// `bench` or `replica-<id>`.
    pub process: String,
    pub pid: u32,
    /// CPU seconds (user + system) in the window.
    pub cpu_s: f64,
    /// Microseconds of CPU per completed operation; `None` without operations.
    pub cpu_us_per_op: Option<f64>,
}

impl ProcessCpu {
    /// `ticks` clock ticks (at `ticks_per_s`) spent while `ops` operations completed.
    pub fn new(process: String, pid: u32, ticks: u64, ticks_per_s: u64, ops: u64) -> ProcessCpu {
        let cpu_s = ticks as f64 / ticks_per_s.max(1) as f64;
        ProcessCpu {
            process,
            pid,
            cpu_s,
            cpu_us_per_op: (ops > 0).then(|| cpu_s * 1e6 / ops as f64),
        }
    }
}

/// One run: one client count of a sweep, or the only run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunResult {
    pub clients: u32,
    /// Which repetition of this client count (1-based; `--repeat`).
    pub repeat: u32,
    pub depth: u32,
    /// Open loop: the offered rate in operations per second; `None` for a closed loop.
    pub rate_ops_s: Option<f64>,
    /// Length of the measured window (warm-up excluded).
    pub duration_s: f64,
    /// Operations started in the window that completed successfully.
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Operations started in the window that failed (timeout, error reply, shed by the open
    /// loop's backlog limit).
    pub errors: u64,
    pub throughput_ops_s: f64,
    pub latency: Latency,
    /// Mean requests per committed batch, from the replicas' counters; `None` if unknown.
    pub batch_size_mean: Option<f64>,
    /// Per process: the bench process itself and, for a cluster it started, every replica.
    pub cpu: Vec<ProcessCpu>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// What was measured, the same for every run of one invocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Setup {
    pub version: String,
    /// `local` (started by bench) or the cluster file used.
    pub cluster: String,
    pub replicas: u32,
    pub fault_model: String,
    pub durability: String,
    pub auth: String,
    pub payload_bytes: usize,
    pub read_ratio: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub cores: usize,
}

/// The median over the repetitions of one client count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MedianResult {
    pub clients: u32,
    /// Repetitions it is the median of.
    pub runs: u32,
    /// The median throughput: that of the run in the middle when the runs are sorted by
    /// throughput (the lower of the two middle ones for an even count, so it is a real run).
    pub throughput_ops_s: f64,
    pub throughput_min_ops_s: f64,
    pub throughput_max_ops_s: f64,
    /// The repetition that run was; the latencies below are its own.
    pub median_repeat: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// For every client count that ran more than once, in first-run order: the median run.
pub fn medians(runs: &[RunResult]) -> Vec<MedianResult> {
    let mut counts: Vec<u32> = Vec::new();
    for r in runs {
        if !counts.contains(&r.clients) {
            counts.push(r.clients);
        }
    }
    counts
        .into_iter()
        .filter_map(|clients| {
            let mut of: Vec<&RunResult> = runs.iter().filter(|r| r.clients == clients).collect();
            if of.len() < 2 {
                return None;
            }
            of.sort_by(|a, b| a.throughput_ops_s.total_cmp(&b.throughput_ops_s));
            let m = of[(of.len() - 1) / 2];
            Some(MedianResult {
                clients,
                runs: of.len() as u32,
                throughput_ops_s: m.throughput_ops_s,
                throughput_min_ops_s: of[0].throughput_ops_s,
                throughput_max_ops_s: of[of.len() - 1].throughput_ops_s,
                median_repeat: m.repeat,
                p50_ms: m.latency.p50_ms,
                p99_ms: m.latency.p99_ms,
            })
        })
        .collect()
}

/// `results.json`: the setup, every run, and the medians of repeated client counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub runs: Vec<RunResult>,
    pub medians: Vec<MedianResult>,
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(String::new, |v| format!("{v:.decimals$}"))
}

/// The processes that have a CPU column: the union over runs, in first-seen order.
fn cpu_columns(runs: &[RunResult]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        for c in &r.cpu {
            if !names.contains(&c.process) {
                names.push(c.process.clone());
            }
        }
    }
    names
}

fn cpu_of(run: &RunResult, process: &str) -> Option<f64> {
    run.cpu
        .iter()
        .find(|c| c.process == process)
        .and_then(|c| c.cpu_us_per_op)
}

impl Report {
    /// `results.csv`: a header and one row per run; CPU columns are µs per operation.
    pub fn csv(&self) -> String {
        let s = &self.setup;
        let cpu = cpu_columns(&self.runs);
        let mut out = String::from(
            "fault_model,replicas,durability,auth,payload_bytes,read_ratio,clients,run,depth,\
             rate_ops_s,duration_s,ops,reads,writes,errors,throughput_ops_s,mean_ms,p50_ms,\
             p90_ms,p99_ms,max_ms,batch_size_mean",
        );
        for c in &cpu {
            out.push_str(&format!(",cpu_us_per_op_{}", c.replace('-', "_")));
        }
        out.push('\n');
        for r in &self.runs {
            let l = &r.latency;
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{:.3},{},{},{},{},{:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{}",
                s.fault_model,
                s.replicas,
                s.durability,
                s.auth,
                s.payload_bytes,
                s.read_ratio,
                r.clients,
                r.repeat,
                r.depth,
                opt(r.rate_ops_s, 1),
                r.duration_s,
                r.ops,
                r.reads,
                r.writes,
                r.errors,
                r.throughput_ops_s,
                l.mean_ms,
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms,
                opt(r.batch_size_mean, 2),
            ));
            for c in &cpu {
                out.push(',');
                out.push_str(&opt(cpu_of(r, c), 1));
            }
            out.push('\n');
        }
        out
    }

    /// `medians.csv`: a header and one row per repeated client count; `None` if none was.
    pub fn medians_csv(&self) -> Option<String> {
        if self.medians.is_empty() {
            return None;
        }
        let mut out = String::from(
            "clients,runs,throughput_ops_s,throughput_min_ops_s,throughput_max_ops_s,\
             median_run,p50_ms,p99_ms\n",
        );
        for m in &self.medians {
            out.push_str(&format!(
                "{},{},{:.1},{:.1},{:.1},{},{:.3},{:.3}\n",
                m.clients,
                m.runs,
                m.throughput_ops_s,
                m.throughput_min_ops_s,
                m.throughput_max_ops_s,
                m.median_repeat,
                m.p50_ms,
                m.p99_ms
            ));
        }
        Some(out)
    }

    /// `results.json`.
    pub fn json(&self) -> Result<String, String> {
        serde_json::to_string_pretty(self).map_err(|e| e.to_string())
    }

    /// The table printed at the end: one row per run, latencies in ms, CPU in µs per op.
    pub fn table(&self) -> String {
        let cpu = cpu_columns(&self.runs);
        let repeated = self.runs.iter().any(|r| r.repeat > 1);
        let mut header = vec!["clients".to_string()];
        if repeated {
            header.push("run".into());
        }
        header.extend([
            "depth".into(),
            "rate".into(),
            "ops".into(),
            "errors".into(),
            "ops/s".into(),
            "p50 ms".into(),
            "p90 ms".into(),
            "p99 ms".into(),
            "max ms".into(),
            "batch".into(),
        ]);
        header.extend(cpu.iter().map(|c| format!("{c} µs/op")));
        let mut rows = vec![header];
        for r in &self.runs {
            let l = &r.latency;
            let mut row = vec![r.clients.to_string()];
            if repeated {
                row.push(r.repeat.to_string());
            }
            row.extend([
                r.depth.to_string(),
                r.rate_ops_s
                    .map_or_else(|| "closed".to_string(), |v| format!("{v:.0}")),
                r.ops.to_string(),
                r.errors.to_string(),
                format!("{:.0}", r.throughput_ops_s),
                format!("{:.2}", l.p50_ms),
                format!("{:.2}", l.p90_ms),
                format!("{:.2}", l.p99_ms),
                format!("{:.2}", l.max_ms),
                r.batch_size_mean
                    .map_or_else(|| "-".to_string(), |b| format!("{b:.1}")),
            ]);
            row.extend(
                cpu.iter()
                    .map(|c| cpu_of(r, c).map_or_else(|| "-".to_string(), |v| format!("{v:.0}"))),
            );
            rows.push(row);
        }
        let mut out = aligned(&rows);
        if !self.medians.is_empty() {
            let mut rows = vec![vec![
                "clients".to_string(),
                "runs".into(),
                "median ops/s".into(),
                "min ops/s".into(),
                "max ops/s".into(),
                "median run".into(),
                "its p50 ms".into(),
                "its p99 ms".into(),
            ]];
            rows.extend(self.medians.iter().map(|m| {
                vec![
                    m.clients.to_string(),
                    m.runs.to_string(),
                    format!("{:.0}", m.throughput_ops_s),
                    format!("{:.0}", m.throughput_min_ops_s),
                    format!("{:.0}", m.throughput_max_ops_s),
                    m.median_repeat.to_string(),
                    format!("{:.2}", m.p50_ms),
                    format!("{:.2}", m.p99_ms),
                ]
            }));
            out.push_str("medians:\n");
            out.push_str(&aligned(&rows));
        }
        out
    }
}

/// Rows of cells as right-aligned columns.
fn aligned(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_report() -> Report {
        let mut h = new_histogram().unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let run = RunResult {
            clients: 2,
            repeat: 1,
            depth: 4,
            rate_ops_s: None,
            duration_s: 2.0,
            ops: 1000,
            reads: 250,
            writes: 750,
            errors: 0,
            throughput_ops_s: 500.0,
            latency: Latency::from_histogram(&h),
            batch_size_mean: Some(3.5),
            cpu: vec![
                ProcessCpu::new("bench".into(), 1, 50, 100, 1000),
                ProcessCpu::new("replica-0".into(), 2, 100, 100, 1000),
            ],
            first_error: None,
        };
        Report {
            setup: Setup {
                version: "0.1.0".into(),
                cluster: "local".into(),
                replicas: 4,
                fault_model: "byzantine".into(),
                durability: "memory".into(),
                auth: "signature".into(),
                payload_bytes: 64,
                read_ratio: 0.25,
                warmup_s: 1.0,
                duration_s: 2.0,
                cores: 2,
            },
            runs: vec![run],
            medians: Vec::new(),
        }
    }

    /// `sample_report` with client count 2 run three times (throughputs 500, 300, 700) and
    /// client count 4 once.
    fn repeated_report() -> Report {
        let mut r = sample_report();
        let one = r.runs[0].clone();
        r.runs = [
            (2, 1, 500.0, 5.0),
            (2, 2, 300.0, 9.0),
            (2, 3, 700.0, 3.0),
            (4, 1, 900.0, 4.0),
        ]
        .into_iter()
        .map(|(clients, repeat, ops_s, p50)| RunResult {
            clients,
            repeat,
            throughput_ops_s: ops_s,
            latency: Latency {
                p50_ms: p50,
                ..one.latency.clone()
            },
            ..one.clone()
        })
        .collect();
        r.medians = medians(&r.runs);
        r
    }

    #[test]
    fn median_is_the_middle_run_and_single_runs_have_none() {
        let r = repeated_report();
        assert_eq!(r.medians.len(), 1, "client count 4 ran once");
        let m = &r.medians[0];
        assert_eq!((m.clients, m.runs), (2, 3));
        assert_eq!(m.throughput_ops_s, 500.0);
        assert_eq!(
            (m.throughput_min_ops_s, m.throughput_max_ops_s),
            (300.0, 700.0)
        );
        assert_eq!(
            (m.median_repeat, m.p50_ms),
            (1, 5.0),
            "latencies of the median run"
        );
        // An even count takes the lower middle run, a real one.
        let two = medians(&r.runs[..2]);
        assert_eq!((two[0].throughput_ops_s, two[0].median_repeat), (300.0, 2));
        assert!(medians(&r.runs[3..]).is_empty());
    }

    #[test]
    fn repeated_runs_in_table_and_csv() {
        let r = repeated_report();
        let t = r.table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].split_whitespace().nth(1) == Some("run"), "{t}");
        assert_eq!(lines.len(), 1 + 4 + 1 + 1 + 1, "{t}");
        assert_eq!(lines[5], "medians:");
        assert!(lines[7].contains("500") && lines[7].contains("300") && lines[7].contains("700"));
        let csv = r.medians_csv().unwrap();
        assert_eq!(csv.lines().count(), 2);
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("2,3,500.0,300.0,700.0,1,5.000,"));
        let runs = r.csv();
        let header: Vec<&str> = runs.lines().next().unwrap().split(',').collect();
        let at = header.iter().position(|h| *h == "run").unwrap();
        let repeats: Vec<&str> = runs
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(at).unwrap())
            .collect();
        assert_eq!(repeats, ["1", "2", "3", "1"]);
        assert!(sample_report().medians_csv().is_none());
        assert!(!sample_report().table().contains(" run "));
    }

    #[test]
    fn latency_from_histogram() {
        let r = sample_report();
        let l = &r.runs[0].latency;
        // 10 µs .. 10 ms uniformly: quantiles within the histogram's 3 significant digits.
        assert!((l.p50_ms - 5.0).abs() < 0.01, "{l:?}");
        assert!((l.p90_ms - 9.0).abs() < 0.01, "{l:?}");
        assert!((l.p99_ms - 9.9).abs() < 0.01, "{l:?}");
        assert!((l.max_ms - 10.0).abs() < 0.01, "{l:?}");
        assert!((l.mean_ms - 5.005).abs() < 0.01, "{l:?}");
        assert_eq!(
            Latency::from_histogram(&new_histogram().unwrap()),
            Latency::default()
        );
    }

    #[test]
    fn cpu_per_op() {
        let c = ProcessCpu::new("bench".into(), 1, 250, 100, 500);
        assert_eq!(c.cpu_s, 2.5);
        assert_eq!(c.cpu_us_per_op, Some(5000.0));
        assert_eq!(
            ProcessCpu::new("x".into(), 1, 250, 100, 0).cpu_us_per_op,
            None
        );
    }

    #[test]
    fn csv_shape() {
        let csv = sample_report().csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        let header: Vec<&str> = lines[0].split(',').collect();
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(header.len(), row.len());
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("ops"), "1000");
        assert_eq!(col("throughput_ops_s"), "500.0");
        assert_eq!(col("rate_ops_s"), "");
        assert_eq!(col("batch_size_mean"), "3.50");
        assert_eq!(col("cpu_us_per_op_bench"), "500.0");
        assert_eq!(col("cpu_us_per_op_replica_0"), "1000.0");
        assert_eq!(col("p50_ms"), "5.003");
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_str(&sample_report().json().unwrap()).unwrap();
        assert_eq!(v["setup"]["fault_model"], "byzantine");
        assert_eq!(v["runs"][0]["ops"], 1000);
        assert_eq!(v["runs"][0]["errors"], 0);
        assert!(v["runs"][0]["rate_ops_s"].is_null());
        assert!(v["runs"][0]["latency"]["p99_ms"].as_f64().unwrap() > 9.0);
        assert_eq!(v["runs"][0]["cpu"][1]["process"], "replica-0");
        assert_eq!(v["runs"][0]["cpu"][1]["cpu_us_per_op"], 1000.0);
    }

    #[test]
    fn table_has_a_row_per_run() {
        let t = sample_report().table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("p99 ms") && lines[0].contains("replica-0 µs/op"));
        assert!(lines[1].contains("closed") && lines[1].contains("500"));
    }
}
