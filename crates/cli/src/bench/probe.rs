//! What `bench` reads from the processes at the edges of the measured window: CPU time from
//! `/proc/<pid>/stat` and the replicas' commit counters from their `/metrics`.

use std::time::Duration;

use shieldwall_node::ClusterConfig;

/// Clock ticks per second of `/proc/<pid>/stat`'s times (`USER_HZ`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as u64,
        _ => 100,
    }
}

/// User plus system CPU time a process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_stat_cpu_ticks(&text).ok_or_else(|| format!("cannot parse {path}"))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may contain spaces and parentheses, so fields are counted after the
/// last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The replicas' commit counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitCounters {
    /// Per replica (in cluster-file order): (committed batches, executed requests), or `None`
    /// if it did not answer.
    pub replicas: Vec<Option<(f64, f64)>>,
}

/// The value of the first sample of metric `name` (any labels) in Prometheus text format.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = match rest.chars().next()? {
            '{' => &rest[rest.find('}')? + 1..],
            ' ' => rest,
            _ => return None,
        };
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Scrape every replica's `/metrics` (in parallel) for its batch and request counters.
pub async fn commit_counters(cluster: &ClusterConfig) -> CommitCounters {
    let bodies =
        crate::status::get_from_every_replica(cluster, "/metrics", Duration::from_millis(1000))
            .await;
    let replicas = bodies
        .into_iter()
        .map(|text| {
            let text = text.ok()?;
            Some((
                metric_value(&text, "shieldwall_committed_batches_total")?,
                metric_value(&text, "shieldwall_executed_requests_total")?,
            ))
        })
        .collect();
    CommitCounters { replicas }
}

/// Mean requests per committed batch between two scrapes, over the replicas that answered
/// both times; `None` if no batch was committed (e.g. a read-only load) or none answered.
/// Null batches (view changes) count as batches.
pub fn mean_batch_size(before: &CommitCounters, after: &CommitCounters) -> Option<f64> {
    let (mut batches, mut requests) = (0.0, 0.0);
    for (b, a) in before.replicas.iter().zip(&after.replicas) {
        if let (Some((b0, r0)), Some((b1, r1))) = (b, a) {
            batches += b1 - b0;
            requests += r1 - r0;
        }
    }
    (batches > 0.0).then(|| requests / batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_odd_command_name() {
        let line = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 \
                    12345 1000 100 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(line), Some(325));
        assert_eq!(parse_stat_cpu_ticks("1234 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn own_process_has_cpu_time() {
        assert!(cpu_ticks(std::process::id()).is_ok());
        assert!(ticks_per_second() > 0);
    }

    #[test]
    fn metric_values() {
        let text = "# HELP shieldwall_committed_batches Batches executed.\n\
                    # TYPE shieldwall_committed_batches counter\n\
                    shieldwall_committed_batches_total{replica=\"0\"} 40\n\
                    shieldwall_committed_batches_total_x{replica=\"0\"} 7\n\
                    shieldwall_executed_requests_total 1000\n";
        assert_eq!(
            metric_value(text, "shieldwall_committed_batches_total"),
            Some(40.0)
        );
        assert_eq!(
            metric_value(text, "shieldwall_executed_requests_total"),
            Some(1000.0)
        );
        assert_eq!(metric_value(text, "shieldwall_view"), None);
    }

    #[test]
    fn batch_size_over_answering_replicas() {
        let before = CommitCounters {
            replicas: vec![Some((10.0, 100.0)), None, Some((10.0, 100.0))],
        };
        let after = CommitCounters {
            replicas: vec![Some((20.0, 500.0)), Some((5.0, 5.0)), Some((30.0, 900.0))],
        };
        // (400 + 800) requests in (10 + 20) batches; replica 1 missed the first scrape.
        assert_eq!(mean_batch_size(&before, &after), Some(40.0));
        assert_eq!(mean_batch_size(&before, &before), None);
    }
}
