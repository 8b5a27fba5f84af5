//! `shieldwall bench` end to end: it starts its own cluster (replica processes on free
//! loopback ports), runs a short closed-loop load, stops everything and writes its results.
//! Nothing here checks speed: only that the run happened, completed operations and wrote
//! well-formed results.

use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_shieldwall")
}

#[test]
fn bench_runs_end_to_end_and_writes_results() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(bin())
        .args([
            "bench",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            "--clients",
            "2",
            "--depth",
            "4",
            "--read-ratio",
            "0.25",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("p99 ms"), "no table:\n{stdout}");
    assert!(stdout.contains("results.csv"), "{stdout}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["setup"]["replicas"], 4);
    assert_eq!(json["setup"]["fault_model"], "byzantine");
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["clients"], 2);
    assert_eq!(run["depth"], 4);
    assert!(run["ops"].as_u64().unwrap() > 0, "{run}");
    assert!(run["writes"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(run["errors"], 0, "{run}");
    assert!(run["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{run}");
    // CPU of the bench process and of each of the 4 replicas it started.
    let cpu = run["cpu"].as_array().unwrap();
    assert_eq!(cpu.len(), 5, "{run}");
    assert!(run["batch_size_mean"].as_f64().unwrap() >= 1.0, "{run}");

    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(header.len(), row.len(), "{csv}");
    let ops = row[header.iter().position(|h| *h == "ops").unwrap()];
    assert!(ops.parse::<u64>().unwrap() > 0, "{csv}");
    assert!(header.contains(&"cpu_us_per_op_replica_3"), "{csv}");
}

/// Requests authenticated with a MAC per replica: the bench turns `request_macs` on in the
/// cluster it starts, and every operation completes (the client sends no signatures, so a
/// replica refusing MAC vectors would leave them all to time out). Run twice (`--repeat 2`):
/// each run on a cluster of its own, and the median reported.
#[test]
fn bench_with_mac_authenticated_requests_repeated() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(bin())
        .args([
            "bench",
            "--auth",
            "mac",
            "--mode",
            "crash",
            "--replicas",
            "3",
            "--duration",
            "2s",
            "--warmup",
            "1s",
            "--clients",
            "2",
            "--depth",
            "4",
            "--repeat",
            "2",
        ])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["setup"]["auth"], "mac", "{json}");
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{json}");
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run["repeat"], i + 1, "{run}");
        assert!(run["ops"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["errors"], 0, "{run}");
    }
    let replica_0 = |run: &serde_json::Value| {
        run["cpu"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["process"] == "replica-0")
            .map(|c| c["pid"].clone())
            .unwrap_or_else(|| panic!("no replica-0 CPU in {run}"))
    };
    assert_ne!(
        replica_0(&runs[0]),
        replica_0(&runs[1]),
        "each repetition starts its own cluster"
    );
    let medians = json["medians"].as_array().unwrap();
    assert_eq!(medians.len(), 1, "{json}");
    assert_eq!(medians[0]["runs"], 2);
    assert!(stdout.contains("medians:"), "{stdout}");
    let csv = std::fs::read_to_string(out.path().join("medians.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
}
