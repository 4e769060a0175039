//! The server's own counters and their Prometheus text rendering.
//!
//! Counters are plain atomics bumped on the request path; the engine's and
//! index's figures are read when `/metrics` is scraped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use lode_protocol::ErrorCode;

/// Where records came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Binary,
    Http,
    Bulk,
    Syslog,
    Loki,
    Otlp,
    Journal,
}

const SOURCES: [Source; 7] = [
    Source::Binary,
    Source::Http,
    Source::Bulk,
    Source::Syslog,
    Source::Loki,
    Source::Otlp,
    Source::Journal,
];

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Binary => "binary",
            Source::Http => "http",
            Source::Bulk => "bulk",
            Source::Loki => "loki",
            Source::Otlp => "otlp",
            Source::Journal => "journal",
            Source::Syslog => "syslog",
        }
    }
}

/// Counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    appended_records: AtomicU64,
    appended_batches: AtomicU64,
    received: [AtomicU64; SOURCES.len()],
    rejected: [AtomicU64; SOURCES.len()],
    queries: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len() + 1],
    auth_failures: [AtomicU64; SOURCES.len()],
    connections: AtomicU64,
    open_connections: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn add_at(counters: &[AtomicU64], i: usize, n: u64) {
    if let Some(counter) = counters.get(i) {
        add(counter, n);
    }
}

fn get_at(counters: &[AtomicU64], i: usize) -> u64 {
    counters.get(i).map_or(0, get)
}

impl Metrics {
    pub(crate) fn appended(&self, records: u64) {
        add(&self.appended_records, records);
        add(&self.appended_batches, 1);
    }

    /// Records received from `source`, accepted or not.
    pub fn received(&self, source: Source, records: u64) {
        add_at(&self.received, source as usize, records);
    }

    /// Lines or items of `source` rejected as malformed.
    pub fn rejected(&self, source: Source, lines: u64) {
        add_at(&self.rejected, source as usize, lines);
    }

    /// A request of `source` refused for its credential.
    pub fn auth_failed(&self, source: Source) {
        add_at(&self.auth_failures, source as usize, 1);
    }

    pub(crate) fn query(&self) {
        add(&self.queries, 1);
    }

    pub fn failed(&self, code: ErrorCode) {
        add_at(&self.errors, code as usize, 1);
    }

    pub(crate) fn connection_opened(&self) {
        add(&self.connections, 1);
        add(&self.open_connections, 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// The server's own figures for `stats`.
    pub(crate) fn figures(&self) -> Vec<(String, u64)> {
        vec![
            ("appended_records".into(), get(&self.appended_records)),
            ("appended_batches".into(), get(&self.appended_batches)),
            ("queries".into(), get(&self.queries)),
            ("open_connections".into(), get(&self.open_connections)),
        ]
    }

    /// Prometheus text exposition of these counters and of `figures` (the
    /// engine's and index's, as [`crate::Service::figures`] gives them).
    pub fn render(&self, figures: &[(String, u64)]) -> String {
        let mut out = String::new();
        counter(
            &mut out,
            "lode_ingest_records_total",
            "Records appended durably.",
            &[("", get(&self.appended_records))],
        );
        counter(
            &mut out,
            "lode_ingest_batches_total",
            "Appends (batches) made durable.",
            &[("", get(&self.appended_batches))],
        );
        let by_source = |values: &[AtomicU64; SOURCES.len()]| {
            SOURCES
                .iter()
                .map(|s| {
                    (
                        format!("source=\"{}\"", s.name()),
                        get_at(values, *s as usize),
                    )
                })
                .collect::<Vec<_>>()
        };
        labelled(
            &mut out,
            "lode_received_records_total",
            "Records received, by front end, before validation.",
            &by_source(&self.received),
        );
        labelled(
            &mut out,
            "lode_rejected_records_total",
            "Lines or items rejected as malformed, by front end.",
            &by_source(&self.rejected),
        );
        labelled(
            &mut out,
            "lode_auth_failures_total",
            "Requests refused for their credential (none, unknown, expired, or without the scope or tenant), by front end.",
            &by_source(&self.auth_failures),
        );
        counter(
            &mut out,
            "lode_queries_total",
            "Queries, counts, histograms and top-values requests.",
            &[("", get(&self.queries))],
        );
        let errors: Vec<(String, u64)> = ErrorCode::ALL
            .into_iter()
            .map(|c| {
                (
                    format!("code=\"{}\"", c.name()),
                    get_at(&self.errors, c as usize),
                )
            })
            .collect();
        labelled(
            &mut out,
            "lode_errors_total",
            "Requests that failed, by error code.",
            &errors,
        );
        counter(
            &mut out,
            "lode_connections_total",
            "Connections accepted.",
            &[("", get(&self.connections))],
        );
        gauge(
            &mut out,
            "lode_open_connections",
            "Connections open now.",
            get(&self.open_connections),
        );
        for (name, help, kind) in ENGINE_FIGURES {
            if let Some((_, value)) = figures.iter().find(|(n, _)| n == name) {
                let metric = format!("lode_{name}{}", if *kind { "_total" } else { "" });
                if *kind {
                    counter(&mut out, &metric, help, &[("", *value)]);
                } else {
                    gauge(&mut out, &metric, help, *value);
                }
            }
        }
        out
    }
}

/// Engine and index figures exported: name, help, and whether a counter.
const ENGINE_FIGURES: &[(&str, &str, bool)] = &[
    ("records", "Records retained.", false),
    ("raft_node_id", "This node's id in its cluster.", false),
    ("raft_term", "The Raft term this node is in.", false),
    (
        "raft_leader",
        "The leader this node knows (0: none).",
        false,
    ),
    ("raft_is_leader", "1 on the leader.", false),
    (
        "raft_last_log_index",
        "Index of the newest entry in this node's log.",
        false,
    ),
    (
        "raft_committed_index",
        "Index of the newest entry known committed.",
        false,
    ),
    (
        "raft_applied_index",
        "Index of the newest entry applied (its records readable).",
        false,
    ),
    (
        "raft_max_follower_lag",
        "On the leader: entries the furthest follower lacks.",
        false,
    ),
    ("next_seq", "The seq the next record gets.", false),
    ("wal_segments", "WAL segment files not yet sealed.", false),
    ("wal_bytes", "Bytes of WAL not yet sealed.", false),
    ("unsealed_records", "Records still in the WAL.", false),
    ("sealed_segments", "Sealed segments retained.", false),
    ("sealed_bytes", "Bytes of sealed segment files.", false),
    ("wal_appends", "Batches appended to the WAL.", true),
    ("group_commits", "WAL write and fsync rounds.", true),
    ("seal_failures", "Seals that failed (retried).", true),
    ("dropped_segments", "Segments dropped by retention.", true),
    ("index_lag", "Durable records not yet searchable.", false),
    (
        "index_bitmap_bytes",
        "Memory the index's field bitmaps take (with the per-record values built for top values).",
        false,
    ),
    (
        "poisoned",
        "1 when the engine refuses writes after a failed fsync.",
        false,
    ),
    (
        "retention_max_bytes",
        "The retention bound on sealed bytes (0: none).",
        false,
    ),
    (
        "disk_free_bytes",
        "Free bytes on the data directory's disk.",
        false,
    ),
    (
        "disk_free_floor_bytes",
        "Below this many free bytes writes are refused.",
        false,
    ),
    (
        "no_space",
        "1 while writes are refused for want of disk space (this node's, or in a cluster any member's).",
        false,
    ),
];

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(&str, u64)]) {
    header(out, name, help, "counter");
    for (labels, value) in values {
        sample(out, name, labels, *value);
    }
}

fn labelled(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    header(out, name, help, "counter");
    for (labels, value) in values {
        sample(out, name, labels, *value);
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    sample(out, name, "", value);
}

/// A cluster node's labelled and histogram figures: each follower's lag
/// (on the leader), leader changes, append and commit latencies.
/// Each tenant's writes and refusals.
pub(crate) fn render_tenants(
    out: &mut String,
    tenants: &[(String, crate::tenants::TenantFigures)],
) {
    let by = |value: fn(&crate::tenants::TenantFigures) -> u64| -> Vec<(String, u64)> {
        tenants
            .iter()
            .map(|(name, f)| (format!("tenant=\"{name}\""), value(f)))
            .collect()
    };
    labelled(
        out,
        "lode_tenant_ingested_records_total",
        "Records each tenant wrote (admitted by its limits).",
        &by(|f| f.records),
    );
    labelled(
        out,
        "lode_tenant_ingested_bytes_total",
        "Bytes of records (their text) each tenant wrote.",
        &by(|f| f.bytes),
    );
    labelled(
        out,
        "lode_tenant_refused_total",
        "Writes refused because a tenant was past its ingest limits (429).",
        &by(|f| f.refused),
    );
}

pub(crate) fn render_cluster(
    out: &mut String,
    status: &lode_replication::Status,
    figures: &lode_replication::Figures,
) {
    let last = status.last_log_index.unwrap_or(0);
    let lags: Vec<(String, u64)> = status
        .matched
        .iter()
        .filter(|(id, _)| **id != status.node_id)
        .map(|(id, matched)| {
            // A follower known to hold nothing lacks the whole log.
            let lag = matched.map_or(status.last_log_index.map_or(0, |l| l + 1), |m| {
                last.saturating_sub(m)
            });
            (format!("peer=\"{id}\""), lag)
        })
        .collect();
    header(
        out,
        "lode_raft_follower_lag_entries",
        "On the leader: entries each follower lacks.",
        "gauge",
    );
    for (labels, value) in &lags {
        sample(out, "lode_raft_follower_lag_entries", labels, *value);
    }
    header(
        out,
        "lode_raft_follower_lag_bytes",
        "On the leader: bytes of the log each follower lacks.",
        "gauge",
    );
    for (id, bytes) in &status.lag_bytes {
        sample(
            out,
            "lode_raft_follower_lag_bytes",
            &format!("peer=\"{id}\""),
            *bytes,
        );
    }
    counter(
        out,
        "lode_raft_leader_changes_total",
        "Times this node saw the leader change.",
        &[("", figures.leader_changes)],
    );
    counter(
        out,
        "lode_raft_refused_messages_total",
        "Peer messages refused before Raft saw them (a sender without the certificate it claims, or fields Raft would fail on).",
        &[("", figures.refused_messages)],
    );
    for (name, help, value) in &figures.snapshots {
        counter(out, name, help, &[("", *value)]);
    }
    histogram(
        out,
        "lode_raft_append_seconds",
        "Log appends on this node until durable (write and fsync).",
        &figures.append,
    );
    histogram(
        out,
        "lode_raft_commit_seconds",
        "Log entries proposed on this node (as leader) until committed and applied.",
        &figures.commit,
    );
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    h: &lode_replication::latency::LatencySnapshot,
) {
    header(out, name, help, "histogram");
    for (bound, count) in lode_replication::latency::BOUNDS.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds);
    let _ = writeln!(out, "{name}_count {}", h.count);
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_and_types() {
        let metrics = Metrics::default();
        metrics.appended(5);
        metrics.received(Source::Syslog, 2);
        metrics.failed(ErrorCode::BadQuery);
        let text = metrics.render(&[("wal_bytes".into(), 77), ("group_commits".into(), 3)]);
        assert!(
            text.contains(
                "# TYPE lode_ingest_records_total counter\nlode_ingest_records_total 5\n"
            )
        );
        assert!(text.contains("lode_received_records_total{source=\"syslog\"} 2\n"));
        assert!(text.contains("lode_errors_total{code=\"bad_query\"} 1\n"));
        assert!(text.contains("# TYPE lode_wal_bytes gauge\nlode_wal_bytes 77\n"));
        assert!(text.contains("lode_group_commits_total 3\n"));
        for line in text
            .lines()
            .filter(|l| l.starts_with("# TYPE") && l.ends_with("counter"))
        {
            assert!(
                line.split(' ').nth(2).unwrap().ends_with("_total"),
                "{line}"
            );
        }
    }
}
