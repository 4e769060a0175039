//! `lode cluster status|verify|add|remove|transfer-leader`: the nodes'
//! HTTP APIs, asked through [`Api`] (plain HTTP or HTTPS, with a token).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::CliError;
use crate::api::Api;

/// How long a node has to answer a question about itself.
const SHORT: Duration = Duration::from_secs(10);

/// A field of a JSON object, `null` when absent.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        other => other.to_string().trim_matches('"').to_owned(),
    }
}

/// A line per snapshot transfer a node takes part in: files and bytes
/// done of all, rate, time left.
fn print_transfers(addr: &str, s: &serde_json::Value) {
    for t in field(s, "transfers").as_array().into_iter().flatten() {
        let mib = |key| field(t, key).as_u64().unwrap_or(0) as f64 / f64::from(1 << 20);
        let eta = field(t, "eta_secs")
            .as_u64()
            .map_or_else(|| "-".to_owned(), |e| format!("{e} s"));
        println!(
            "  {addr}: snapshot {} {} node {}: files {}/{}, {:.1}/{:.1} MiB at {:.1} MiB/s, {eta} left",
            text(field(t, "direction")),
            if field(t, "direction") == "sending" {
                "to"
            } else {
                "from"
            },
            text(field(t, "peer")),
            text(field(t, "files_done")),
            text(field(t, "files")),
            mib("bytes_done"),
            mib("bytes"),
            mib("bytes_per_sec"),
        );
    }
}

/// Prints a line per node, then each follower's lag as the leader sees it.
pub(crate) fn status(api: &Api) -> Result<(), CliError> {
    let nodes = &api.http;
    println!(
        "{:<22} {:>4} {:<9} {:>6} {:>6} {:>10} {:>10} {:>10}",
        "address", "node", "role", "term", "leader", "last", "committed", "applied"
    );
    let mut leader_view = None;
    let mut failures = 0;
    for addr in nodes {
        match api.request(addr, "GET", "/api/v1/cluster", None, SHORT) {
            Ok((200, s)) => {
                println!(
                    "{:<22} {:>4} {:<9} {:>6} {:>6} {:>10} {:>10} {:>10}",
                    addr,
                    text(field(&s, "node")),
                    text(field(&s, "role")),
                    text(field(&s, "term")),
                    text(field(&s, "leader")),
                    text(field(&s, "last_log_index")),
                    text(field(&s, "committed_index")),
                    text(field(&s, "applied_index"))
                );
                print_transfers(addr, &s);
                if field(&s, "role") == "leader" {
                    leader_view = Some(s);
                }
            }
            Ok((code, body)) => {
                failures += 1;
                println!(
                    "{addr:<22} answered {code}: {}",
                    text(field(field(&body, "error"), "message"))
                );
            }
            Err(e) => {
                failures += 1;
                println!("{addr:<22} unreachable: {}", e.0);
            }
        }
    }
    if let Some(leader) = leader_view {
        let ids = |key| {
            let ids: Vec<String> = field(&leader, key)
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            if ids.is_empty() {
                "-".to_owned()
            } else {
                ids.join(",")
            }
        };
        println!("voters {}; learners {}", ids("voters"), ids("learners"));
        let last = field(&leader, "last_log_index").as_u64().unwrap_or(0);
        for peer in field(&leader, "peers").as_array().into_iter().flatten() {
            if field(peer, "node") == field(&leader, "node") {
                continue;
            }
            let lag = field(peer, "matched_index")
                .as_u64()
                .map_or_else(|| "all".to_owned(), |m| last.saturating_sub(m).to_string());
            println!(
                "follower {}: matched {}, lag {lag} entries, {} bytes",
                text(field(peer, "node")),
                text(field(peer, "matched_index")),
                text(field(peer, "lag_bytes"))
            );
        }
    } else {
        println!("no node answered as leader");
    }
    if failures == nodes.len() {
        return Err(CliError::new("no node answered"));
    }
    Ok(())
}

/// The HTTP address of the node among `nodes` that answers as leader,
/// with its status.
fn find_leader(api: &Api) -> Result<(&str, Value), CliError> {
    for addr in &api.http {
        if let Ok((200, s)) = api.request(addr, "GET", "/api/v1/cluster", None, SHORT)
            && field(&s, "role") == "leader"
        {
            return Ok((addr, s));
        }
    }
    Err(CliError::new("none of the nodes given answered as leader"))
}

/// Asks the leader among `nodes` for `method path`; the answer's body if
/// it succeeded.
fn ask_leader(
    api: &Api,
    method: &str,
    path: &str,
    wait: Duration,
) -> Result<(Value, Value), CliError> {
    let (addr, status) = find_leader(api)?;
    let (code, body) = api.request(addr, method, path, None, wait)?;
    if code != 200 {
        return Err(CliError::new(format!(
            "{addr}: {}",
            text(field(field(&body, "error"), "message"))
        )));
    }
    Ok((status, body))
}

/// Asks the leader among `nodes` to hand leadership to `to`.
pub(crate) fn transfer_leader(to: u64, api: &Api) -> Result<(), CliError> {
    let path = format!("/api/v1/cluster/transfer-leader?to={to}");
    let (status, _) = ask_leader(api, "POST", &path, SHORT)?;
    println!(
        "node {} hands leadership to node {to}",
        text(field(&status, "node"))
    );
    Ok(())
}

/// How long an add may take: the new node receives the whole log first.
const CATCH_UP: Duration = Duration::from_secs(3600);

/// Adds node `id` at peer address `addr` through the leader among `nodes`.
pub(crate) fn add(id: u64, addr: &str, api: &Api) -> Result<(), CliError> {
    if addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(CliError::new(format!(
            "'{addr}' is not a peer address (HOST:PORT, the node's --peers entry)"
        )));
    }
    println!("adding node {id} at {addr}: a learner until it has the log, then a voter ...");
    let path = format!("/api/v1/cluster/nodes?id={id}&addr={addr}");
    let (status, _) = ask_leader(api, "POST", &path, CATCH_UP)?;
    println!(
        "node {id} is a voter (added by the leader, node {})",
        text(field(&status, "node"))
    );
    Ok(())
}

/// Removes node `id` through the leader among `nodes`.
pub(crate) fn remove(id: u64, api: &Api) -> Result<(), CliError> {
    let path = format!("/api/v1/cluster/nodes/{id}");
    let (status, _) = ask_leader(api, "DELETE", &path, SHORT)?;
    println!(
        "node {id} removed (by the leader, node {})",
        text(field(&status, "node"))
    );
    Ok(())
}

/// Compares the nodes' log checksums through the least applied index,
/// from the first entry every node's log still holds (below it, records
/// are compared by their segments' checksums).
pub(crate) fn verify(api: &Api) -> Result<(), CliError> {
    let nodes = &api.http;
    let mut through = u64::MAX;
    let mut from = 0;
    for addr in nodes {
        let (code, s) = api.request(addr, "GET", "/api/v1/cluster", None, SHORT)?;
        if code != 200 {
            return Err(CliError::new(format!(
                "{addr} answered {code}: is it a cluster node?"
            )));
        }
        let applied = field(&s, "applied_index")
            .as_u64()
            .ok_or_else(|| CliError::new(format!("{addr} has applied nothing yet")))?;
        through = through.min(applied);
        from = from.max(field(&s, "first_log_index").as_u64().unwrap_or(0));
    }
    let mut lists = Vec::new();
    let mut segment_lists = Vec::new();
    for addr in nodes {
        let (code, body) = api.request(
            addr,
            "GET",
            &format!("/api/v1/cluster/verify?from={from}&through={through}"),
            None,
            SHORT,
        )?;
        if code != 200 {
            return Err(CliError::new(format!(
                "{addr}: {}",
                text(field(field(&body, "error"), "message"))
            )));
        }
        lists.push((addr, field(&body, "ranges").clone()));
        segment_lists.push((addr, segment_sums(&body)));
    }
    let differ_in_segments = compare_segments(&segment_lists);
    let Some((first_addr, reference)) = lists.first() else {
        return Err(CliError::new("no node given"));
    };
    let mut differ = 0;
    for (addr, ranges) in lists.iter().skip(1) {
        if ranges != reference {
            differ += 1;
            let theirs = ranges.as_array().cloned().unwrap_or_default();
            let ours = reference.as_array().cloned().unwrap_or_default();
            let at = theirs
                .iter()
                .zip(&ours)
                .position(|(a, b)| a != b)
                .unwrap_or(theirs.len().min(ours.len()));
            let range = theirs.get(at).or(ours.get(at)).cloned().unwrap_or_default();
            println!(
                "{addr} differs from {first_addr} in entries {}..={}",
                text(field(&range, "first")),
                text(field(&range, "last"))
            );
        }
    }
    if differ > 0 {
        return Err(CliError::new(format!(
            "{differ} node(s) hold a different log through index {through}"
        )));
    }
    if differ_in_segments > 0 {
        return Err(CliError::new(format!(
            "{differ_in_segments} sealed segment(s) hold different records on different nodes"
        )));
    }
    if from > through {
        println!(
            "{} nodes hold the same records in their segments; no log entry is held by all (purged through their snapshots)",
            nodes.len()
        );
    } else {
        println!(
            "{} nodes hold the same log from index {from} through {through}, and the same records in their segments",
            nodes.len()
        );
    }
    Ok(())
}

/// A node's sealed segments: (first seq, last seq) → records checksum.
type SegmentSums = BTreeMap<(u64, u64), Option<u64>>;

fn segment_sums(body: &serde_json::Value) -> SegmentSums {
    field(body, "segments")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let first = field(s, "first_seq").as_u64()?;
            let last = field(s, "last_seq").as_u64()?;
            Some(((first, last), field(s, "records_crc32c").as_u64()))
        })
        .collect()
}

/// Compares the records checksums of segments that cover the same seqs on
/// two nodes (nodes may seal at other boundaries; those are covered by
/// the log's checksums); prints and counts each that differs.
fn compare_segments(lists: &[(&String, SegmentSums)]) -> usize {
    let Some((first_addr, reference)) = lists.first() else {
        return 0;
    };
    let mut differ = 0;
    for (addr, sums) in lists.iter().skip(1) {
        for (range, sum) in sums {
            match reference.get(range) {
                Some(Some(want)) if sum.is_some_and(|s| s != *want) => {
                    differ += 1;
                    println!(
                        "{addr} differs from {first_addr} in the records of sealed segment {}..={}",
                        range.0, range.1
                    );
                }
                _ => {}
            }
        }
    }
    differ
}
