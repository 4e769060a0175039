//! A client's retried batch is stored once, for good: its key is
//! remembered with the sealed segments (not only in the log, which is
//! purged), carried by snapshots, and known to whichever node leads next.

use std::time::{Duration, Instant};

use lode_client::{Appended, Client};
use lode_engine::{BatchKey, EncodedBatch, LogRecord};

use crate::cluster::{Cluster3, Node, PURGING, ask, metric, runtime};

/// A word only the keyed batch's records hold.
const MARK: &str = "exactlyoncemark";

fn keyed_records() -> Vec<LogRecord> {
    (0..5)
        .map(|i| {
            let mut record = crate::record_for(900_000 + i);
            record.message = format!("{MARK} record {i}");
            record
        })
        .collect()
}

/// Sends the keyed batch to `node` (retrying while it cannot take it:
/// not yet the leader, or still starting); its seqs.
fn send_keyed(node: &Node, key: BatchKey) -> Appended {
    let batch = EncodedBatch::encode(&keyed_records())
        .unwrap()
        .with_key(key)
        .unwrap();
    let addr = node.tcp.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    runtime().block_on(async {
        loop {
            let attempt = async {
                let client = Client::connect_tcp(&addr).await?;
                client.submit_encoded(batch.clone()).await?.wait().await
            };
            match tokio::time::timeout(Duration::from_secs(20), attempt).await {
                Ok(Ok(appended)) => return appended,
                outcome => assert!(
                    Instant::now() < deadline,
                    "the keyed batch was never taken: {outcome:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Writes filler records through `node` until every running node has
/// purged its log through `index` (so the keyed batch's entry is only in
/// sealed segments).
fn fill_until_purged(cluster: &Cluster3, node: u64, index: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0u64;
    loop {
        let purged: Vec<Option<u64>> = cluster
            .nodes
            .values()
            .filter(|n| n.is_running())
            .map(|n| n.status().and_then(|s| s["purged_index"].as_u64()))
            .collect();
        if purged.iter().all(|p| p.is_some_and(|p| p >= index)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes did not purge through {index}: {purged:?}"
        );
        // About a fifth of a segment per request, a few per second: seals,
        // snapshots and purges keep up.
        std::thread::sleep(Duration::from_millis(100));
        let lines: String = (0..100)
            .map(|i| {
                n += 1;
                format!("{{\"message\":\"filler {n} {i} {}\"}}\n", "y".repeat(100))
            })
            .collect();
        let answer = ask(
            &cluster.nodes[&node],
            "POST",
            "/api/v1/ingest",
            "",
            lines.as_bytes(),
        );
        assert!(
            answer.as_ref().is_some_and(|(status, _)| *status == 200),
            "filler: {answer:?}"
        );
    }
}

/// How many records of the keyed batch `node` holds (a linearizable
/// count).
fn marked(node: &Node) -> u64 {
    crate::cluster::linearizable_count(node, MARK)
}

fn last_index(node: &Node) -> u64 {
    node.status()
        .and_then(|s| s["last_log_index"].as_u64())
        .expect("a status")
}

/// The interleaving that lost keys: batch K commits, every node seals and
/// purges its entry, both followers restart (their key tables rebuilt
/// from what is on disk), the leader is killed, and K's retry reaches
/// the new leader: it is answered with K's first seqs and stored once.
#[test]
fn a_retry_after_purges_restarts_and_a_new_leader_is_stored_once() {
    let mut cluster = Cluster3::start_on_loopback(PURGING);
    let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
    let key = BatchKey {
        producer: 0x5eed_0001,
        sequence: 1,
    };
    let first = send_keyed(&cluster.nodes[&leader], key);
    assert_eq!(first.end - first.start, 5);
    let index = last_index(&cluster.nodes[&leader]);
    fill_until_purged(&cluster, leader, index);
    let followers = cluster.others(leader);
    for id in &followers {
        let node = cluster.nodes.get_mut(id).unwrap();
        node.kill();
        node.start();
    }
    cluster.settle(Duration::from_secs(60));
    cluster.nodes.get_mut(&leader).unwrap().kill();
    let next = cluster
        .leader(Duration::from_secs(30))
        .expect("a new leader");
    assert_ne!(next, leader);
    let again = send_keyed(&cluster.nodes[&next], key);
    assert_eq!(again, first, "the retry is answered with the first seqs");
    for id in &followers {
        assert_eq!(marked(&cluster.nodes[id]), 5, "node {id} holds K once");
    }
}

/// A follower away while K is written and purged catches up by
/// snapshot, then leads: K's retry is answered with its first seqs.
#[test]
fn a_retry_to_a_leader_that_installed_a_snapshot_is_stored_once() {
    let mut cluster = Cluster3::start_on_loopback(PURGING);
    let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
    let away = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    cluster.nodes.get_mut(&away).unwrap().kill();
    let key = BatchKey {
        producer: 0x5eed_0002,
        sequence: 7,
    };
    let first = send_keyed(&cluster.nodes[&leader], key);
    let index = last_index(&cluster.nodes[&leader]);
    fill_until_purged(&cluster, leader, index);
    cluster.nodes.get_mut(&away).unwrap().start();
    cluster.settle(Duration::from_secs(60));
    let metrics = cluster.nodes[&away].get("/metrics").unwrap_or_default();
    assert!(
        metric(&metrics, "lode_snapshots_received_total") >= 1,
        "node {away} caught up by snapshot"
    );
    // Leadership moves to the node that installed the snapshot.
    let moved = ask(
        &cluster.nodes[&leader],
        "POST",
        &format!("/api/v1/cluster/transfer-leader?to={away}"),
        "",
        b"",
    );
    assert!(
        moved.as_ref().is_some_and(|(s, _)| *s == 200),
        "transfer: {moved:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.leader(Duration::from_secs(10)) != Some(away) {
        assert!(Instant::now() < deadline, "node {away} never led");
    }
    let again = send_keyed(&cluster.nodes[&away], key);
    assert_eq!(again, first, "the retry is answered with the first seqs");
    assert_eq!(marked(&cluster.nodes[&away]), 5, "K is held once");
}
