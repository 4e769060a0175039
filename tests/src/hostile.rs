//! Input meant to break a node, from clients and from peers: bodies that
//! unpack past any batch, zip bombs, huge lines, unknown encodings,
//! clients that trickle, random datagrams on the peer port, a peer whose
//! certificate is not the node it claims, and Raft messages crafted to
//! trip openraft. After each, the node (every node of a cluster) takes
//! and acknowledges writes, and a cluster's logs stay identical.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lode_replication::wire::{self, Response, crafted};
use lode_server::{Config, Server};
use lode_tools::SplitMix64;
use serde_json::Value;

use crate::cluster::Cluster3;
use crate::server::{http_with, runtime};

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A Loki JSON push of `lines` lines of `len` bytes each: the push that
/// stopped a cluster's Raft when it unpacked past one log entry.
fn big_loki_push(lines: usize, len: usize) -> Vec<u8> {
    let line = "x".repeat(len);
    let mut body = String::with_capacity(lines * (len + 40));
    body.push_str(r#"{"streams":[{"stream":{"service_name":"big"},"values":["#);
    for i in 0..lines {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"["{}","{i} {line}"]"#,
            1_798_761_600_000_000_000u64 + i as u64
        ));
    }
    body.push_str("]}]}");
    gzip(body.as_bytes())
}

/// A gzip body that unpacks to `unpacked` bytes of newlines.
fn zip_bomb(unpacked: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let block = vec![b'\n'; 1 << 20];
    for _ in 0..unpacked.div_ceil(block.len()) {
        gz.write_all(&block).unwrap();
    }
    gz.finish().unwrap()
}

/// POSTs a JSON body of one line of `len` bytes to `/api/v1/ingest`:
/// its head and a first MiB, then the rest only if no answer came (a
/// server that refuses on the announced length answers at once, and an
/// answer read after the server closed on unread bytes may be lost to
/// the reset); the status.
fn huge_line(addr: SocketAddr, len: usize) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: l\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"message\":\"",
        len + 15
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'z'; 1 << 20];
    let _ = stream.write_all(&chunk);
    let status = |stream: &mut TcpStream, wait: Duration| {
        stream.set_read_timeout(Some(wait)).unwrap();
        let mut answer = [0u8; 64];
        let n = stream.read(&mut answer).unwrap_or(0);
        let text = String::from_utf8_lossy(&answer[..n]).into_owned();
        text.get(9..12).and_then(|s| s.parse::<u16>().ok())
    };
    if let Some(code) = status(&mut stream, Duration::from_secs(5)) {
        return code;
    }
    stream
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    for _ in 1..len / chunk.len() {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    status(&mut stream, Duration::from_secs(20)).unwrap_or(0)
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

fn loopback() -> Option<SocketAddr> {
    "127.0.0.1:0".parse().ok()
}

/// Whether the server closes `stream` (or answers and closes) within
/// `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// One server: a push that unpacks to 100 MB is cut into batches the log
/// takes; a bomb, a line past `max_line_bytes` and an unknown encoding
/// are refused naming their limit; JSON lines honour gzip and zstd;
/// clients that trickle headers, a body or a binary frame are cut off.
#[test]
fn hostile_bodies_and_slow_clients_leave_a_server_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = Config {
        data: dir.path().to_owned(),
        listen: loopback(),
        quic: None,
        http: loopback(),
        syslog: None,
        limits: lode_server::Limits {
            max_unpacked_bytes: 8 << 20,
            header_timeout_ms: 500,
            body_timeout_ms: 1000,
            ..lode_server::Limits::default()
        },
        ..Config::default()
    };
    let server = rt.block_on(Server::start(config)).unwrap();
    let addr = server.addresses().http.unwrap();
    let gz_json = "Content-Type: application/json\r\nContent-Encoding: gzip\r\n";

    // 7,000 lines of 1 KiB: within the unpacked limit, past no batch.
    let push = big_loki_push(7_000, 1024);
    let (status, _, body) = http_with(addr, "POST", "/loki/api/v1/push", gz_json, &push);
    assert_eq!(status, 204, "{}", message(&body));

    let bomb = zip_bomb(9 << 20);
    for path in [
        "/loki/api/v1/push",
        "/api/v1/ingest",
        "/_bulk",
        "/v1/logs",
        "/upload",
    ] {
        let (status, _, body) = http_with(addr, "POST", path, gz_json, &bomb);
        let said = message(&body);
        assert_eq!(status, 413, "{path}: {said}");
        assert!(said.contains("max_unpacked_bytes"), "{path}: {said}");
    }

    let lines = b"{\"message\":\"packed line one\"}\n{\"message\":\"packed line two\"}\n";
    let (status, _, body) = http_with(addr, "POST", "/api/v1/ingest", gz_json, &gzip(lines));
    assert_eq!(status, 200, "{}", message(&body));
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["accepted"],
        2
    );
    let zstd_body = zstd::encode_all(&b"{\"message\":\"zstd line\"}\n"[..], 3).unwrap();
    let (status, _, body) = http_with(
        addr,
        "POST",
        "/api/v1/ingest",
        "Content-Encoding: zstd\r\n",
        &zstd_body,
    );
    assert_eq!(status, 200, "{}", message(&body));
    let (status, _, body) = http_with(
        addr,
        "POST",
        "/api/v1/ingest",
        "Content-Encoding: br\r\n",
        lines,
    );
    assert_eq!(status, 415, "{}", message(&body));
    assert!(message(&body).contains("'br'"));

    let long = format!("{{\"message\":\"{}\"}}\n", "y".repeat(2 << 20));
    let (status, _, body) = http_with(addr, "POST", "/api/v1/ingest", "", long.as_bytes());
    assert_eq!(status, 413, "{}", message(&body));
    assert!(
        message(&body).contains("max_line_bytes"),
        "{}",
        message(&body)
    );

    // Headers that never end, a body that never comes, a binary frame
    // announced and not sent: each connection is closed.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: l\r\n")
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "slow headers cut off"
    );
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"POST /api/v1/ingest HTTP/1.1\r\nHost: l\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "a slow body cut off"
    );
    let tcp = server.addresses().tcp.unwrap();
    let mut slow = TcpStream::connect(tcp).unwrap();
    slow.write_all(&lode_protocol::wire::encode_hello(
        lode_protocol::wire::VERSION,
        lode_protocol::wire::HelloStatus::Ok,
    ))
    .unwrap();
    let mut header = Vec::new();
    lode_protocol::wire::encode_header(lode_protocol::wire::Kind::Request, 0, 1, 1000, &mut header);
    slow.write_all(&header).unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "a slow frame cut off"
    );

    let service = server.service();
    assert!(service.wait_indexed(Duration::from_secs(60)));
    let (status, _, body) = http_with(addr, "GET", "/api/v1/count?q=service:big", "", b"");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["count"],
        7_000
    );
    let (status, _, body) = http_with(addr, "GET", "/api/v1/count", "", b"");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["count"],
        7_003,
        "the bombs and the long line wrote nothing"
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// Dials `to`'s peer endpoint with node `as_node`'s certificate and sends
/// one request; the answer, or why none came.
async fn as_peer(
    cluster: &Cluster3,
    to: u64,
    as_node: u64,
    request: &wire::Request,
) -> Result<Response, String> {
    let files = lode_replication::tls::NodeTlsFiles::in_dir(&cluster.tls_dir(), as_node);
    let tls = lode_replication::tls::NodeTls::load(&files).map_err(|e| e.to_string())?;
    let endpoint = lode_client::quic_endpoint("127.0.0.1:0".parse().unwrap(), None)
        .map_err(|e| e.to_string())?;
    let addr = cluster.nodes[&to].peer;
    let name = lode_replication::tls::node_name(to);
    let exchange = async {
        let conn = endpoint
            .connect_with(tls.client_config().map_err(|e| e.to_string())?, addr, &name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&wire::encode_request(1, request))
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let reply = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
        wire::decode_response(&reply)
            .map(|(_, r)| r)
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

fn refused(answer: Result<Response, String>, what: &str) {
    match answer {
        Ok(Response::Error(reason)) => assert!(reason.contains("refused"), "{what}: {reason}"),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

/// A term past every node's.
fn node_term(cluster: &Cluster3, id: u64) -> u64 {
    cluster.nodes[&id]
        .status()
        .and_then(|s| s["term"].as_u64())
        .unwrap_or(1)
}

/// Three nodes. Sent to each node in turn, the leader included: a push
/// that unpacks to 98 MiB (one log entry could not hold it), a zip bomb
/// past the unpacked limit, a body of one 200 MiB line. Then 3,000
/// random datagrams on each peer port, a peer with node 2's certificate
/// claiming to be node 3, and a vote, an append and a snapshot install
/// crafted to trip openraft. Afterwards every node is up, takes a write
/// acknowledged within 5 s, and the committed logs are identical.
#[test]
fn hostile_input_stops_no_node_of_a_cluster() {
    let mut cluster = Cluster3::start();
    let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
    let push = big_loki_push(100_000, 1024);
    assert!(
        push.len() < 8 << 20,
        "the push is {} bytes packed",
        push.len()
    );
    let bomb = zip_bomb(300 << 20);
    let gz_json = "Content-Type: application/json\r\nContent-Encoding: gzip\r\n";
    let mut order: Vec<u64> = vec![leader];
    order.extend(cluster.nodes.keys().filter(|id| **id != leader));
    let mut pushed = 0u64;
    for id in &order {
        let http = cluster.nodes[id].http;
        let (status, _, body) = http_with(http, "POST", "/loki/api/v1/push", gz_json, &push);
        assert_eq!(status, 204, "node {id}: the big push: {}", message(&body));
        pushed += 100_000;
        let (status, _, body) = http_with(http, "POST", "/loki/api/v1/push", gz_json, &bomb);
        assert_eq!(status, 413, "node {id}: the bomb: {}", message(&body));
        assert_eq!(huge_line(http, 200 << 20), 413, "node {id}: a 200 MiB line");
    }

    let mut rng = SplitMix64::new(28);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for node in cluster.nodes.values() {
        for _ in 0..3_000 {
            let len = 1 + (rng.next_u64() % 1400) as usize;
            let datagram: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = socket.send_to(&datagram, node.peer);
        }
    }

    let rt = runtime();
    rt.block_on(async {
        let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
        let target = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
        let other = *cluster
            .nodes
            .keys()
            .find(|id| **id != leader && **id != target)
            .unwrap();
        let term = node_term(&cluster, target);
        // Node `other`'s certificate, claiming to be the leader.
        let claim = crafted::append(term, leader, None, &[]);
        refused(
            as_peer(&cluster, target, other, &claim).await,
            "a borrowed identity",
        );
        let claim = crafted::vote(term + 1, leader, None);
        refused(
            as_peer(&cluster, target, other, &claim).await,
            "a borrowed vote",
        );
        // Its own identity, with fields openraft would fail on.
        let max = crafted::vote(u64::MAX, other, None);
        refused(
            as_peer(&cluster, target, other, &max).await,
            "a vote of term u64::MAX",
        );
        let gap = crafted::append(term, other, Some((term, 5)), &[(term, 9)]);
        refused(
            as_peer(&cluster, target, other, &gap).await,
            "entries with a gap",
        );
        let backwards = crafted::install(term + 1, other, (term + 2, 10), &[1, 2, 3]);
        refused(
            as_peer(&cluster, target, other, &backwards).await,
            "a snapshot past its term",
        );
        let empty = crafted::install(term + 1, other, (term, 10), &[]);
        refused(
            as_peer(&cluster, target, other, &empty).await,
            "a snapshot of no voters",
        );
    });

    // Every node is up and takes a write, acknowledged within 5 s.
    let leader = cluster
        .leader(Duration::from_secs(30))
        .expect("a leader after it all");
    for (id, node) in cluster.nodes.iter_mut() {
        assert!(node.alive(), "node {id} still runs");
        let ready = node.get("/ready").unwrap_or_default();
        assert!(
            ready.starts_with("HTTP/1.1 200"),
            "node {id} is ready: {ready}"
        );
    }
    for (id, node) in &cluster.nodes {
        let started = Instant::now();
        let line = format!("{{\"message\":\"after on node {id}\"}}\n");
        let (status, _, body) = http_with(node.http, "POST", "/api/v1/ingest", "", line.as_bytes());
        assert_eq!(status, 200, "node {id}: {}", message(&body));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "node {id} acknowledged a write in {:?}",
            started.elapsed()
        );
    }
    let refusals: u64 = cluster
        .nodes
        .values()
        .map(|n| {
            let metrics = n.get("/metrics").unwrap_or_default();
            crate::cluster::metric(&metrics, "lode_raft_refused_messages_total")
        })
        .sum();
    assert!(
        refusals >= 6,
        "the crafted messages are counted: {refusals}"
    );
    let _ = leader;
    let through = cluster.settle(Duration::from_secs(60));
    let logs = crate::cluster::stopped_logs(&mut cluster, through);
    let expected = pushed + cluster.nodes.len() as u64;
    for (i, records) in logs.iter().enumerate() {
        assert_eq!(records.len() as u64, expected, "node {}'s records", i + 1);
    }
}
