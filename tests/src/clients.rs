//! Real clients nobody here wrote, against a server on loopback: util-linux
//! `logger` (syslog over TCP and UDP, both RFC formats, octet counting),
//! Python's `elasticsearch` client (`helpers.bulk`), rsyslog forwarding to
//! `_bulk` with `omelasticsearch`, syslog-ng's `elasticsearch-http()`,
//! `python-logging-loki` pushing to the
//! Loki push API, and `promtool check metrics`. Each is checked by
//! querying what arrived.
//!
//! The server asks for credentials, as one on a network does, and each
//! client sends them the way it can: an ingest token of the tenant `shop`
//! as Basic auth (Python's `elasticsearch`, `python-logging-loki`,
//! `loki-logger-handler`, winston-loki, rsyslog's `omelasticsearch`,
//! syslog-ng's `elasticsearch-http()`) or a bearer header (the
//! OpenTelemetry exporters); a client certificate of `shop`
//! (`systemd-journal-upload` over HTTPS, rsyslog forwarding RFC 5425
//! syslog over TLS); plain syslog from an allowed network (`logger`).
//! Every record read back must be `shop`'s.
//!
//! `tools/with-deps --test` installs them (Debian `bsdutils`, `rsyslog`,
//! `systemd-journal-remote`,
//! `rsyslog-elasticsearch`, `prometheus`; PyPI `elasticsearch`,
//! `python-logging-loki`, `loki-logger-handler`; a virtual environment with `opentelemetry-sdk`
//! and `opentelemetry-exporter-otlp-json-http`); a missing
//! one fails its test with that hint rather than passing silently.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lode_server::{Caller, Config, Server, Service};

use crate::server::runtime;

fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "'{program}' is not installed: run the tests through `tools/with-deps --test`"
    );
}

fn run(program: &str, args: &[&str]) -> Output {
    require(program);
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The tenant the clients write to, with a token of its own.
const TENANT: &str = "shop";

/// A server that asks for credentials, as one on a network would: the
/// clients send an ingest token of [`TENANT`] (Basic auth, or a bearer
/// header), plain syslog is heard from loopback (`syslog_allow`) into
/// [`TENANT`]. Returns the server and the token.
fn start(rt: &tokio::runtime::Runtime, data: &Path) -> (Server, String) {
    start_with(rt, data, |_| {})
}

fn start_with(
    rt: &tokio::runtime::Runtime,
    data: &Path,
    tune: impl FnOnce(&mut Config),
) -> (Server, String) {
    let loopback: Option<SocketAddr> = "127.0.0.1:0".parse().ok();
    let mut config = Config {
        data: data.to_owned(),
        listen: None,
        quic: None,
        http: loopback,
        syslog: loopback,
        syslog_allow: vec!["127.0.0.1".into()],
        syslog_tenant: TENANT.into(),
        ..Config::default()
    };
    config.auth.mode = "required".into();
    tune(&mut config);
    let server = rt.block_on(Server::start(config)).unwrap();
    let scopes = lode_server::Scopes::parse("ingest").unwrap();
    let token = rt
        .block_on(
            server
                .service()
                .create_token(&Caller::everything(), Some(TENANT), scopes, None),
        )
        .unwrap()
        .secret;
    (server, token)
}

/// Starts a server in `dir`, runs the Python `script` with `python` (a
/// name on the PATH, or a path), the server's HTTP URL and `args`, and
/// checks that it ran through, printing `done`.
fn serve_and_run_python(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    python: &str,
    script: &str,
    args: &[&str],
    done: &str,
) -> Server {
    serve_and_run(rt, dir, python, ("client.py", script), args, done)
}

/// As [`serve_and_run_python`], for any interpreter: `script` is written
/// to `dir/name`.
fn serve_and_run(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    python: &str,
    (name, script): (&str, &str),
    args: &[&str],
    done: &str,
) -> Server {
    if !python.contains('/') {
        require(python);
    }
    let (server, token) = start(rt, dir);
    let url = format!("http://{}", server.addresses().http.unwrap());
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let out = Command::new(python)
        .arg(&path)
        .arg(&url)
        .args(args)
        .env("LODE_TOKEN", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(done),
        "{python} {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server
}

/// Polls until `query` counts `expected` records (they arrive
/// asynchronously through the shippers), at most 30 s.
fn wait_count(rt: &tokio::runtime::Runtime, service: &Arc<Service>, query: &str, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut count = 0;
    while Instant::now() < deadline {
        assert!(service.wait_indexed(Duration::from_secs(10)));
        let filter = lode_protocol::wire::Filter {
            query: query.into(),
            ..Default::default()
        };
        count = rt.block_on(service.count(&shop(), filter)).unwrap();
        if count >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count, expected, "records matching '{query}'");
}

/// Who reads [`TENANT`]'s records.
fn shop() -> Caller {
    Caller {
        tenants: vec![TENANT.into()],
        ..Caller::everything()
    }
}

/// The records of `service_name`, each checked to be [`TENANT`]'s.
fn messages(service: &Service, service_name: &str) -> Vec<lode_engine::LogRecord> {
    let records: Vec<_> = service
        .engine()
        .scan(..)
        .map(|r| r.unwrap().log)
        .filter(|r| r.service == service_name)
        .collect();
    for r in &records {
        assert_eq!(r.tenant, TENANT, "{service_name}: {}", r.message);
    }
    records
}

#[test]
fn logger_over_tcp_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (server, _) = start(&rt, dir.path());
    let port = server.addresses().syslog.unwrap().port().to_string();
    let base = ["-n", "127.0.0.1", "-P", port.as_str()];
    let cases: [(&[&str], &str); 4] = [
        (
            &["-T", "-t", "lgtcp", "-p", "user.err"],
            "logger rfc5424 over tcp",
        ),
        (
            &["-d", "-t", "lgudp", "-p", "user.warning"],
            "logger rfc5424 over udp",
        ),
        (
            &["-T", "--rfc3164", "-t", "lgbsd", "-p", "daemon.info"],
            "logger rfc3164 over tcp",
        ),
        (
            &["-T", "--octet-count", "-t", "lgoct", "-p", "local0.debug"],
            "logger octet counted",
        ),
    ];
    for (flags, message) in cases {
        let mut args: Vec<&str> = base.to_vec();
        args.extend_from_slice(flags);
        args.push(message);
        run("logger", &args);
    }
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "logger", 4);
    let expect = [
        (
            "lgtcp",
            lode_engine::Level::Error,
            "logger rfc5424 over tcp",
        ),
        ("lgudp", lode_engine::Level::Warn, "logger rfc5424 over udp"),
        ("lgbsd", lode_engine::Level::Info, "logger rfc3164 over tcp"),
        ("lgoct", lode_engine::Level::Debug, "logger octet counted"),
    ];
    for (app, level, message) in expect {
        let found = messages(&service, app);
        assert_eq!(found.len(), 1, "{app}");
        assert_eq!(
            (&found[0].level, found[0].message.as_str()),
            (&level, message)
        );
        assert!(
            !found[0].host.is_empty(),
            "{app}: logger sends the hostname"
        );
    }
    rt.block_on(server.shutdown()).unwrap();
}

const BULK_PY: &str = r#"
import sys
from elasticsearch import Elasticsearch, helpers
import os
es = Elasticsearch(sys.argv[1], basic_auth=("lode", os.environ["LODE_TOKEN"]), request_timeout=30)
assert es.info()["version"]["number"].startswith("8."), "an 8.x version"
docs = ({"_index": "pyshop", "message": f"python order {i} shipped",
         "level": "warning" if i % 10 == 0 else "info", "order": i}
        for i in range(int(sys.argv[2])))
ok, errors = helpers.bulk(es, docs, chunk_size=200)
assert ok == int(sys.argv[2]) and not errors, (ok, errors)
print("bulk ok", ok)
"#;

#[test]
fn python_elasticsearch_helpers_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = serve_and_run_python(
        &rt,
        dir.path(),
        "python3",
        BULK_PY,
        &["1000"],
        "bulk ok 1000",
    );
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:pyshop shipped", 1000);
    wait_count(&rt, &service, "service:pyshop level:warn", 100);
    let one = messages(&service, "pyshop")
        .into_iter()
        .find(|r| r.message == "python order 7 shipped")
        .unwrap();
    assert!(one.attrs.contains(&("order".into(), "7".into())));
    rt.block_on(server.shutdown()).unwrap();
}

/// `python-logging-loki` (version "1": Loki's JSON push, which it expects
/// to answer 204), three records of a `checkout` service.
const LOKI_PY: &str = r#"
import logging, os, sys
import logging_loki

url = sys.argv[1] + "/loki/api/v1/push"
handler = logging_loki.LokiHandler(url=url, tags={"service": "checkout", "env": "prod"},
                                   auth=("lode", os.environ["LODE_TOKEN"]), version="1")
def fail(record):
    raise SystemExit("loki handler failed: %s" % (sys.exc_info()[1],))
handler.handleError = fail
log = logging.getLogger("shop")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.info("order 1 paid")
log.warning("order 2 slow", extra={"tags": {"region": "eu"}})
log.error("order 3 failed")
print("loki ok")
"#;

#[test]
fn python_logging_loki_pushes_records_with_their_labels() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = serve_and_run_python(&rt, dir.path(), "python3", LOKI_PY, &[], "loki ok");
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:checkout", 3);
    wait_count(&rt, &service, "service:checkout level:error failed", 1);
    let got = messages(&service, "checkout");
    let levels: Vec<_> = got
        .iter()
        .map(|r| (r.level.clone(), r.message.as_str()))
        .collect();
    assert_eq!(
        levels,
        [
            (lode_engine::Level::Info, "order 1 paid"),
            (lode_engine::Level::Warn, "order 2 slow"),
            (lode_engine::Level::Error, "order 3 failed"),
        ]
    );
    let slow = &got[1];
    for want in [("env", "prod"), ("logger", "shop"), ("region", "eu")] {
        assert!(
            slow.attrs.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {:?}",
            slow.attrs
        );
    }
    let now = lode_engine::now_ns();
    assert!(
        got.iter().all(|r| (now - r.ts).abs() < 60_000_000_000),
        "timestamps are the records' own"
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// A daemon of the test's own (rsyslogd, syslog-ng), stopped when
/// dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn rsyslog_forwards_to_bulk() {
    require("rsyslogd");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (server, token) = start(&rt, &dir.path().join("data"));
    let http = server.addresses().http.unwrap();
    let input = free_port();
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let conf = format!(
        r#"global(workDirectory="{work}")
module(load="imtcp")
module(load="omelasticsearch")
template(name="lodejson" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="host" name="hostname" format="jsonf")
  property(outname="severity" name="syslogseverity-text" format="jsonf")
  property(outname="program" name="programname" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
}}
input(type="imtcp" port="{input}" address="127.0.0.1")
action(type="omelasticsearch" server="127.0.0.1" serverport="{port}" searchIndex="rsyslog"
       uid="lode" pwd="{token}" template="lodejson" bulkmode="on" action.resumeInterval="1")
"#,
        work = work.display(),
        port = http.port()
    );
    let conf_path = work.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let pid = work.join("rsyslogd.pid");
    let _rsyslog = Daemon(
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf_path)
            .arg("-i")
            .arg(&pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // rsyslog listens once its config is loaded.
    wait_listening(input, "rsyslogd");
    let port = input.to_string();
    for i in 0..20 {
        let message = format!("payment {i} settled via rsyslog");
        run(
            "logger",
            &[
                "-n",
                "127.0.0.1",
                "-P",
                &port,
                "-T",
                "-t",
                "payments",
                "-p",
                "user.warning",
                &message,
            ],
        );
    }
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:payments settled level:warn", 20);
    rt.block_on(server.shutdown()).unwrap();
}

/// rsyslog forwarding over TLS (RFC 5425: `omfwd` with the OpenSSL
/// stream driver, octet-counted frames) to lode's syslog TLS listener,
/// presenting a client certificate of the tenant: no plain syslog is
/// heard (`syslog_allow` is empty), so the records arrive only because
/// the certificate names their tenant.
#[test]
fn rsyslog_forwards_over_tls_with_a_client_certificate() {
    require("rsyslogd");
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let server_cert = lode_server::tls::issue_server(&certs, &["localhost".into()]).unwrap();
    let client = lode_server::tls::issue_client(&certs, TENANT).unwrap();
    let rt = runtime();
    let (server, _) = start_with(&rt, &dir.path().join("data"), |config| {
        config.syslog_allow.clear();
        config.tls.cert = Some(server_cert.cert.clone());
        config.tls.key = Some(server_cert.key.clone());
        config.tls.client_ca = Some(certs.join("ca.pem"));
        config.tls.syslog = "127.0.0.1:0".parse().ok();
    });
    let tls_port = server.addresses().syslog_tls.unwrap().port();
    let input = free_port();
    let work = dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let conf = format!(
        r#"global(workDirectory="{work}"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp")
input(type="imtcp" port="{input}" address="127.0.0.1")
action(type="omfwd" target="127.0.0.1" port="{tls_port}" protocol="tcp"
       StreamDriver="ossl" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="localhost" TCP_Framing="octet-counted"
       template="RSYSLOG_SyslogProtocol23Format" action.resumeInterval="1")
"#,
        work = work.display(),
        ca = certs.join("ca.pem").display(),
        cert = client.cert.display(),
        key = client.key.display(),
    );
    let conf_path = work.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _rsyslog = Daemon(
        Command::new("rsyslogd")
            .args(["-n", "-f"])
            .arg(&conf_path)
            .arg("-i")
            .arg(work.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(input, "rsyslogd");
    let port = input.to_string();
    for i in 0..10 {
        let message = format!("refund {i} sent over tls");
        run(
            "logger",
            &[
                "-n",
                "127.0.0.1",
                "-P",
                &port,
                "-T",
                "-t",
                "refunds",
                "-p",
                "user.notice",
                &message,
            ],
        );
    }
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:refunds sent", 10);
    assert_eq!(messages(&service, "refunds").len(), 10);
    rt.block_on(server.shutdown()).unwrap();
}

fn wait_listening(port: u16, daemon: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{daemon} did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// syslog-ng's `elasticsearch-http()` destination with its default
/// template (syslog-ng's macros by their upper-case names) into `_bulk`:
/// RFC 5424 lines in over TCP, each arriving with its host, program,
/// severity and message, and its pid as an attribute.
#[test]
fn syslog_ng_elasticsearch_http_posts_to_bulk() {
    let root = std::path::PathBuf::from(
        std::env::var("LODE_SYSLOG_NG").unwrap_or_else(|_| "/var/tmp/lode-test-syslog-ng".into()),
    );
    let program = root.join("usr/sbin/syslog-ng");
    assert!(
        program.is_file(),
        "{} is missing: run the tests through `tools/with-deps --test`",
        program.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (server, token) = start(&rt, &dir.path().join("data"));
    let http = server.addresses().http.unwrap();
    let input = free_port();
    let work = dir.path().join("syslog-ng");
    std::fs::create_dir_all(&work).unwrap();
    let conf = format!(
        r#"@version: 3.38
@define include-path "{include}"
@include "scl/elasticsearch/elastic-http.conf"
options {{ keep-hostname(yes); }};
source lines {{ network(ip("127.0.0.1") port({input}) transport("tcp") flags(syslog-protocol)); }};
destination lode {{ elasticsearch-http(url("http://{http}/_bulk") index("syslog-ng") type("") user("lode") password("{token}")); }};
log {{ source(lines); destination(lode); }};
"#,
        include = root.join("usr/share/syslog-ng/include").display(),
    );
    let conf_path = work.join("syslog-ng.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let _syslog_ng = Daemon(
        Command::new(&program)
            .arg("-F")
            .arg("-f")
            .arg(&conf_path)
            .arg(format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ))
            .arg("-R")
            .arg(work.join("persist"))
            .arg("-p")
            .arg(work.join("pid"))
            .arg("-c")
            .arg(work.join("ctl"))
            .env("LD_LIBRARY_PATH", root.join("usr/lib/syslog-ng"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(input, "syslog-ng");
    let mut lines = String::new();
    for i in 0..20 {
        let (host, severity) = if i % 2 == 0 {
            ("web-1", 4)
        } else {
            ("web-2", 3)
        };
        lines += &format!(
            "<{pri}>1 2026-12-03T10:00:{i:02}.000Z {host} checkout {pid} - - order {i} shipped via syslog-ng\n",
            pri = 8 + severity,
            pid = 4000 + i
        );
    }
    std::net::TcpStream::connect(("127.0.0.1", input))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:checkout shipped", 20);
    let mut got = messages(&service, "checkout");
    got.sort_by_key(|r| {
        r.message
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse::<u32>().ok())
    });
    for (i, r) in got.iter().enumerate() {
        let (host, level) = if i % 2 == 0 {
            ("web-1", lode_engine::Level::Warn)
        } else {
            ("web-2", lode_engine::Level::Error)
        };
        assert_eq!(
            (r.host.as_str(), &r.level, r.message.as_str()),
            (
                host,
                &level,
                format!("order {i} shipped via syslog-ng").as_str()
            )
        );
        let sent = lode_codec::parse_rfc3339(&format!("2026-12-03T10:00:{i:02}Z"));
        assert_eq!(Some(r.ts), sent, "the line's own time");
        let pid = (4000 + i).to_string();
        assert!(
            r.attrs.iter().any(|(k, v)| k == "PID" && *v == pid),
            "{:?}",
            r.attrs
        );
    }
    rt.block_on(server.shutdown()).unwrap();
}

/// `promtool check metrics` accepts `text` (a `/metrics` answer's body).
pub(crate) fn promtool_check(text: &str) {
    require("promtool");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_metrics() {
    require("promtool");
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    // `/metrics` for a scraper without a token: auth.metrics_open.
    let (server, _) = start_with(&rt, dir.path(), |config| config.auth.metrics_open = true);
    let service = Arc::clone(server.service());
    let record = crate::record_for(1);
    rt.block_on(service.append_records(&lode_server::Caller::everything(), vec![record], None))
        .unwrap();
    let (status, head, body) =
        crate::server::http(server.addresses().http.unwrap(), "GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    promtool_check(&text);
    assert!(text.contains("lode_ingest_records_total 1\n"));
    rt.block_on(server.shutdown()).unwrap();
}

/// The alerting rules shipped in `docs/prometheus/` load, and each alert
/// fires on the series it is meant for (promtool's rule unit tests).
#[test]
fn promtool_checks_and_tests_the_alert_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/prometheus");
    let rules = dir.join("alerts.yml");
    let out = run("promtool", &["check", "rules", rules.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 7 rules found"));
    let tests = dir.join("alerts.test.yml");
    let out = run("promtool", &["test", "rules", tests.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

/// Runs an OpenTelemetry `script` (it prints "otel ok" at its end) with
/// the Python of the virtual environment `python_var` names, and returns
/// the server and the two records it logs as `service_name`.
fn otel_export(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    python_var: &str,
    script: &str,
    service_name: &str,
) -> (Server, Vec<lode_engine::LogRecord>) {
    let python = std::env::var(python_var).unwrap_or_else(|_| {
        panic!(
            "{python_var} is not set: OpenTelemetry's SDK is installed by `tools/with-deps --test`"
        )
    });
    let server = serve_and_run_python(rt, dir, &python, script, &[], "otel ok");
    let service = Arc::clone(server.service());
    wait_count(rt, &service, &format!("service:{service_name}"), 2);
    let got = messages(&service, service_name);
    (server, got)
}

fn host_level_message(got: &[lode_engine::LogRecord]) -> Vec<(&str, lode_engine::Level, &str)> {
    got.iter()
        .map(|r| (r.host.as_str(), r.level.clone(), r.message.as_str()))
        .collect()
}

/// OpenTelemetry's Python SDK: its logging handler, a resource, and the
/// OTLP exporter over HTTP in JSON, one record at a time.
const OTEL_JSON_PY: &str = r#"
import logging, os, sys
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.json.http._log_exporter import OTLPLogExporter

provider = LoggerProvider(resource=Resource.create({"service.name": "otelshop", "host.name": "otelhost"}))
exporter = OTLPLogExporter(endpoint=sys.argv[1] + "/v1/logs",
                           headers={"Authorization": "Bearer " + os.environ["LODE_TOKEN"]})
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
log = logging.getLogger("shop")
log.setLevel(logging.DEBUG)
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
log.warning("otel order 5 slow", extra={"order": 5})
log.error("otel order 6 failed")
provider.shutdown()
print("otel ok")
"#;

#[test]
fn opentelemetry_python_sdk_exports_logs_as_otlp_json() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (server, got) = otel_export(
        &rt,
        dir.path(),
        "LODE_OTEL_JSON_PYTHON",
        OTEL_JSON_PY,
        "otelshop",
    );
    assert_eq!(
        host_level_message(&got),
        [
            ("otelhost", lode_engine::Level::Warn, "otel order 5 slow"),
            ("otelhost", lode_engine::Level::Error, "otel order 6 failed"),
        ]
    );
    assert!(
        got[0].attrs.contains(&("order".into(), "5".into())),
        "{:?}",
        got[0].attrs
    );
    assert!(
        got[0]
            .attrs
            .contains(&("telemetry.sdk.language".into(), "python".into()))
    );
    let now = lode_engine::now_ns();
    assert!(got.iter().all(|r| (now - r.ts).abs() < 60_000_000_000));
    rt.block_on(server.shutdown()).unwrap();
}

/// `loki-logger-handler`: gzipped JSON pushes from a background thread,
/// each line the record as JSON (its level read from it).
const LOKI_HANDLER_PY: &str = r#"
import logging, os, sys
from loki_logger_handler.loki_logger_handler import LokiLoggerHandler

handler = LokiLoggerHandler(url=sys.argv[1] + "/loki/api/v1/push",
                            labels={"service": "ledger", "env": "prod"},
                            auth=("lode", os.environ["LODE_TOKEN"]), enable_self_errors=True)
log = logging.getLogger("ledger")
log.setLevel(logging.DEBUG)
log.addHandler(handler)
log.info("ledger entry 1 booked")
log.error("ledger entry 2 refused")
handler.flush()
handler.close()
print("handler ok")
"#;

#[test]
fn loki_logger_handler_pushes_gzipped_json() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let server = serve_and_run_python(
        &rt,
        dir.path(),
        "python3",
        LOKI_HANDLER_PY,
        &[],
        "handler ok",
    );
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:ledger", 2);
    wait_count(&rt, &service, "service:ledger level:error refused", 1);
    let got = messages(&service, "ledger");
    assert!(
        got[0]
            .message
            .contains("\"message\": \"ledger entry 1 booked\""),
        "{}",
        got[0].message
    );
    assert_eq!(got[0].level, lode_engine::Level::Info);
    assert!(got[0].attrs.contains(&("env".into(), "prod".into())));
    rt.block_on(server.shutdown()).unwrap();
}

/// OpenTelemetry's Python SDK with the OTLP exporter over HTTP in
/// protobuf (`opentelemetry-exporter-otlp-proto-http`), in its own
/// virtual environment.
const OTEL_PROTO_PY: &str = r#"
import logging, os, sys
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

trace.set_tracer_provider(TracerProvider())
provider = LoggerProvider(resource=Resource.create({"service.name": "otelproto", "host.name": "protohost"}))
exporter = OTLPLogExporter(endpoint=sys.argv[1] + "/v1/logs",
                           headers={"Authorization": "Bearer " + os.environ["LODE_TOKEN"]})
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
log = logging.getLogger("shop")
log.setLevel(logging.DEBUG)
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
with trace.get_tracer("shop").start_as_current_span("checkout") as span:
    log.warning("proto order 9 slow", extra={"order": 9, "ratio": 0.5})
    print("trace", format(span.get_span_context().trace_id, "032x"))
log.error("proto order 10 failed")
provider.shutdown()
print("otel ok")
"#;

#[test]
fn opentelemetry_python_sdk_exports_logs_as_otlp_protobuf() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let (server, got) = otel_export(
        &rt,
        dir.path(),
        "LODE_OTEL_PROTO_PYTHON",
        OTEL_PROTO_PY,
        "otelproto",
    );
    assert_eq!(
        host_level_message(&got),
        [
            ("protohost", lode_engine::Level::Warn, "proto order 9 slow"),
            (
                "protohost",
                lode_engine::Level::Error,
                "proto order 10 failed"
            ),
        ]
    );
    let attr = |r: &lode_engine::LogRecord, k: &str| {
        r.attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    assert_eq!(attr(&got[0], "order").as_deref(), Some("9"));
    assert_eq!(attr(&got[0], "ratio").as_deref(), Some("0.5"));
    let trace_id = attr(&got[0], "trace_id").expect("the span's trace id");
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert_eq!(attr(&got[0], "span_id").map(|s| s.len()), Some(16));
    assert_eq!(attr(&got[1], "trace_id"), None, "logged outside the span");
    rt.block_on(server.shutdown()).unwrap();
}

/// npm's `winston-loki`: winston's transport for Loki, pushing protobuf
/// compressed with snappy (checked: it falls back to JSON silently when
/// its snappy binding does not load).
const WINSTON_LOKI_JS: &str = r#"
const modules = process.argv[3] + "/node_modules/";
const winston = require(modules + "winston");
const LokiTransport = require(modules + "winston-loki");
const transport = new LokiTransport({
  host: process.argv[2], json: false, interval: 1, replaceTimestamp: false,
  basicAuth: "lode:" + process.env.LODE_TOKEN,
  labels: { app: "winshop", host: "winhost", env: "prod" },
  onConnectionError: (e) => { console.error("push failed:", e); process.exit(2); },
});
if (transport.batcher.contentType !== "application/x-protobuf") {
  console.error("not protobuf:", transport.batcher.contentType);
  process.exit(3);
}
const log = winston.createLogger({ level: "debug", transports: [transport] });
log.warn("winston order 7 slow");
log.error("winston order 8 failed", { order: 8 });
transport.flush().then(() => transport.close()).then(() => console.log("winston ok"));
"#;

#[test]
fn winston_loki_pushes_snappy_protobuf() {
    let modules = std::env::var("LODE_TEST_NODE").unwrap_or_else(|_| {
        panic!("winston-loki is not installed: run the tests through `tools/with-deps --test`")
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let script = ("client.js", WINSTON_LOKI_JS);
    let server = serve_and_run(&rt, dir.path(), "node", script, &[&modules], "winston ok");
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "service:winshop", 2);
    let got = messages(&service, "winshop");
    let fields: Vec<_> = got
        .iter()
        .map(|r| (r.host.as_str(), r.level.clone(), r.message.trim_end()))
        .collect();
    assert_eq!(
        fields,
        [
            // winston-loki writes the rest of winston's fields after the
            // message, the level among them.
            (
                "winhost",
                lode_engine::Level::Warn,
                r#"winston order 7 slow {"level":"warn"}"#
            ),
            (
                "winhost",
                lode_engine::Level::Error,
                r#"winston order 8 failed {"order":8,"level":"error"}"#
            ),
        ]
    );
    assert!(
        got[0].attrs.contains(&("env".into(), "prod".into())),
        "{:?}",
        got[0].attrs
    );
    // `/metrics` needs the read scope.
    let reader = rt
        .block_on(service.create_token(
            &Caller::everything(),
            Some(TENANT),
            lode_server::Scopes::parse("read").unwrap(),
            None,
        ))
        .unwrap()
        .secret;
    let (_, _, metrics) = crate::server::http_with(
        server.addresses().http.unwrap(),
        "GET",
        "/metrics",
        &format!("Authorization: Bearer {reader}\r\n"),
        b"",
    );
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("lode_received_records_total{source=\"loki\"} 2\n")
    );
    rt.block_on(server.shutdown()).unwrap();
}

/// `systemd-journal-upload` (Debian `systemd-journal-remote`) sends a
/// journal file, made by `systemd-journal-remote` from an export, to
/// `/upload`: every entry arrives with its fields.
#[test]
fn systemd_journal_upload_sends_a_journal_file() {
    let remote = "/lib/systemd/systemd-journal-remote";
    let upload = "/lib/systemd/systemd-journal-upload";
    for tool in [remote, upload] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is not installed: run the tests through `tools/with-deps --test`"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("in.export");
    std::fs::write(
        &export,
        "__REALTIME_TIMESTAMP=1798761600000000\n__MONOTONIC_TIMESTAMP=1000\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
         PRIORITY=3\nSYSLOG_IDENTIFIER=jpayments\n_HOSTNAME=jhost\nMESSAGE=journal payment failed\nORDER=9\n\n\
         __REALTIME_TIMESTAMP=1798761600000001\n__MONOTONIC_TIMESTAMP=1001\n_BOOT_ID=0123456789abcdef0123456789abcdef\n\
         PRIORITY=6\n_SYSTEMD_UNIT=jledger.service\n_HOSTNAME=jhost\nMESSAGE=journal ledger ok\n\n",
    )
    .unwrap();
    let journal = dir.path().join("remote.journal");
    let out = Command::new(remote)
        .arg(format!("--output={}", journal.display()))
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Over HTTPS, with a client certificate of the tenant instead of a
    // token: how systemd-journal-upload authenticates.
    let certs = dir.path().join("certs");
    let server_cert = lode_server::tls::issue_server(&certs, &["localhost".into()]).unwrap();
    let client = lode_server::tls::issue_client(&certs, TENANT).unwrap();
    let rt = runtime();
    let (server, _) = start_with(&rt, &dir.path().join("data"), |config| {
        config.tls.mode = "on".into();
        config.tls.cert = Some(server_cert.cert.clone());
        config.tls.key = Some(server_cert.key.clone());
        config.tls.client_ca = Some(certs.join("ca.pem"));
    });
    let url = format!(
        "https://localhost:{}",
        server.addresses().http.unwrap().port()
    );
    let out = Command::new(upload)
        .arg("--follow=no")
        .arg(format!("--url={url}"))
        .arg(format!("--key={}", client.key.display()))
        .arg(format!("--cert={}", client.cert.display()))
        .arg(format!("--trust={}", certs.join("ca.pem").display()))
        .arg(format!("--file={}", journal.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = Arc::clone(server.service());
    wait_count(&rt, &service, "journal", 2);
    let payments = messages(&service, "jpayments");
    assert_eq!(payments.len(), 1);
    let p = &payments[0];
    assert_eq!(
        (p.ts, &p.level, p.host.as_str(), p.message.as_str()),
        (
            1_798_761_600_000_000_000,
            &lode_engine::Level::Error,
            "jhost",
            "journal payment failed"
        )
    );
    assert!(
        p.attrs.contains(&("ORDER".into(), "9".into())),
        "{:?}",
        p.attrs
    );
    let ledger = messages(&service, "jledger.service");
    assert_eq!(
        (ledger.len(), &ledger[0].level),
        (1, &lode_engine::Level::Info)
    );
    rt.block_on(server.shutdown()).unwrap();
}
