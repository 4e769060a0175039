//! Credentials on every front end: a server that requires them, asked by
//! each front end with no credential, a bad token, a token without the
//! scope, a token of another tenant, and the right one. Each answer is
//! checked (401 with `WWW-Authenticate`, 403, or success), and then what
//! was written: every refused write left nothing, every accepted one is
//! in its tenant only.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use lode_client::{Client, ClientOptions, ErrorCode, Filter};
use lode_server::{Caller, Config, Scopes, Server};

use crate::server::{http_with, runtime};

/// What a request may present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Nothing,
    BadToken,
    WrongScope,
    WrongTenant,
    Right,
}

const CREDENTIALS: [Credential; 5] = [
    Credential::Nothing,
    Credential::BadToken,
    Credential::WrongScope,
    Credential::WrongTenant,
    Credential::Right,
];

/// The tokens of the test: team-a may ingest, or read; team-b both.
struct Tokens {
    ingest_a: String,
    read_a: String,
}

impl Tokens {
    /// The token and tenant header a request presents for `credential`,
    /// to do something that needs `write` (ingest) or not (read).
    fn present(
        &self,
        credential: Credential,
        write: bool,
    ) -> (Option<String>, Option<&'static str>) {
        let (mine, other) = if write {
            (&self.ingest_a, &self.read_a)
        } else {
            (&self.read_a, &self.ingest_a)
        };
        match credential {
            Credential::Nothing => (None, None),
            Credential::BadToken => (Some("lode_0000000000000000_nope".into()), None),
            Credential::WrongScope => (Some(other.clone()), None),
            Credential::WrongTenant => (Some(mine.clone()), Some("team-b")),
            Credential::Right => (Some(mine.clone()), None),
        }
    }
}

/// The status a credential must get: 401 for none or a bad one, 403 for
/// the wrong scope or tenant.
fn refusal(credential: Credential) -> Option<u16> {
    match credential {
        Credential::Nothing | Credential::BadToken => Some(401),
        Credential::WrongScope | Credential::WrongTenant => Some(403),
        Credential::Right => None,
    }
}

fn headers(token: Option<&str>, tenant: Option<&str>, content_type: &str) -> String {
    let mut h = format!("Content-Type: {content_type}\r\n");
    if let Some(token) = token {
        h.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(tenant) = tenant {
        h.push_str(&format!("X-Scope-OrgID: {tenant}\r\n"));
    }
    h
}

/// Each HTTP write endpoint: path, content type, and a body holding
/// `marker` as its one record's message.
fn http_writes(marker: &str) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let ts = lode_engine::now_ns();
    vec![
        (
            "/api/v1/ingest",
            "application/x-ndjson",
            format!("{{\"message\":\"{marker}\"}}\n").into_bytes(),
        ),
        (
            "/loki/api/v1/push",
            "application/json",
            format!(r#"{{"streams":[{{"stream":{{"job":"a"}},"values":[["{ts}","{marker}"]]}}]}}"#).into_bytes(),
        ),
        (
            "/v1/logs",
            "application/json",
            format!(
                r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"timeUnixNano":"{ts}","body":{{"stringValue":"{marker}"}}}}]}}]}}]}}"#
            )
            .into_bytes(),
        ),
        (
            "/_bulk",
            "application/x-ndjson",
            format!("{{\"index\":{{\"_index\":\"x\"}}}}\n{{\"message\":\"{marker}\"}}\n").into_bytes(),
        ),
        (
            "/upload",
            "application/vnd.fdo.journal",
            format!("__REALTIME_TIMESTAMP={}\nMESSAGE={marker}\n\n", ts / 1000).into_bytes(),
        ),
    ]
}

/// Each HTTP read endpoint.
fn http_reads() -> Vec<&'static str> {
    vec![
        "/api/v1/query?q=*",
        "/api/v1/count",
        "/api/v1/histogram",
        "/api/v1/top?field=level",
        "/loki/api/v1/query_range?query=%7Bjob%3D%22a%22%7D",
        "/loki/api/v1/labels",
        "/metrics",
    ]
}

/// A marker word: lowercase letters and digits only, one token.
fn marker(front: &str, case: usize, credential: Credential) -> String {
    let front: String = front.chars().filter(char::is_ascii_alphanumeric).collect();
    format!(
        "mark{front}{case}{}",
        format!("{credential:?}").to_lowercase()
    )
}

#[test]
fn every_front_end_answers_each_credential() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let server_cert = lode_server::tls::issue_server(&certs, &["localhost".into()]).unwrap();
    let client_cert = lode_server::tls::issue_client(&certs, "team-a").unwrap();
    let loopback: Option<SocketAddr> = "127.0.0.1:0".parse().ok();
    let mut config = Config {
        data: dir.path().join("data"),
        listen: loopback,
        quic: loopback,
        http: loopback,
        syslog: loopback,
        syslog_allow: vec!["127.0.0.2".into()],
        syslog_tenant: "team-a".into(),
        ..Config::default()
    };
    config.auth.mode = "required".into();
    config.tls.cert = Some(server_cert.cert.clone());
    config.tls.key = Some(server_cert.key.clone());
    config.tls.client_ca = Some(certs.join("ca.pem"));
    config.tls.syslog = loopback;
    let rt = runtime();
    let server = rt.block_on(Server::start(config)).unwrap();
    let service = server.service();
    let admin = Caller::everything();
    let make = |tenant: &str, scopes: &str| {
        rt.block_on(service.create_token(
            &admin,
            Some(tenant),
            Scopes::parse(scopes).unwrap(),
            None,
        ))
        .unwrap()
        .secret
    };
    let tokens = Tokens {
        ingest_a: make("team-a", "ingest"),
        read_a: make("team-a", "read"),
    };
    let addresses = server.addresses().clone();
    let http = addresses.http.unwrap();
    // Markers that must be found (accepted writes), and that must not.
    let mut accepted: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();

    for (case, credential) in CREDENTIALS.into_iter().enumerate() {
        let (token, tenant) = tokens.present(credential, true);
        for (path, content_type, body) in http_writes(&marker("http", case, credential)) {
            let mark = marker(path, case, credential);
            let body = String::from_utf8(body)
                .unwrap()
                .replace(&marker("http", case, credential), &mark);
            let (status, head, answer) = http_with(
                http,
                "POST",
                path,
                &headers(token.as_deref(), tenant, content_type),
                body.as_bytes(),
            );
            let said = String::from_utf8_lossy(&answer).into_owned();
            match refusal(credential) {
                Some(want) => {
                    assert_eq!(status, want, "{path} with {credential:?}: {said}");
                    if want == 401 {
                        assert!(head.contains("www-authenticate: bearer"), "{path}: {head}");
                    }
                    assert!(
                        !said.contains("lode_"),
                        "an answer never echoes a token: {said}"
                    );
                    refused.push(mark);
                }
                None => {
                    assert!(
                        (200..300).contains(&status),
                        "{path} with {credential:?}: {status} {said}"
                    );
                    accepted.push(mark);
                }
            }
        }
        let (token, tenant) = tokens.present(credential, false);
        for path in http_reads() {
            let (status, _, answer) = http_with(
                http,
                "GET",
                path,
                &headers(token.as_deref(), tenant, "text/plain"),
                b"",
            );
            let said = String::from_utf8_lossy(&answer);
            assert_eq!(
                Some(status).filter(|s| *s != 200),
                refusal(credential),
                "{path} with {credential:?}: {said}"
            );
        }
    }
    // Open routes need no credential.
    for path in ["/health", "/ready", "/ui", "/"] {
        assert_eq!(
            http_with(http, "GET", path, "", b"").0,
            200,
            "{path} is open"
        );
    }

    // The binary protocol, over TCP and QUIC: the hello refuses none or a
    // bad token and a tenant the token does not have; a token without
    // the scope is refused per request.
    let cert = certs.join("ca.pem");
    for (front, case_base) in [("tcp", 10), ("quic", 20)] {
        for (i, credential) in CREDENTIALS.into_iter().enumerate() {
            let case = case_base + i;
            let connect = |token: Option<String>, tenant: Option<&str>| {
                let options = ClientOptions {
                    token,
                    tenant: tenant.map(str::to_owned),
                    ..ClientOptions::default()
                };
                rt.block_on(async {
                    match front {
                        "tcp" => {
                            Client::connect_tcp_with(&addresses.tcp.unwrap().to_string(), options)
                                .await
                        }
                        _ => {
                            Client::connect_quic_with(
                                addresses.quic.unwrap(),
                                &cert,
                                "localhost",
                                options,
                            )
                            .await
                        }
                    }
                })
            };
            let code = |e: lode_client::ClientError| match e {
                lode_client::ClientError::Server { code, .. } => code,
                other => panic!("{front}: {other}"),
            };
            let mark = marker(front, case, credential);
            let record = lode_engine::LogRecord {
                message: mark.clone(),
                ts: lode_engine::now_ns(),
                ..lode_engine::LogRecord::default()
            };
            let (token, tenant) = tokens.present(credential, true);
            let write =
                connect(token, tenant).and_then(|c| rt.block_on(c.append(&[record])).map(|_| ()));
            let (token, tenant) = tokens.present(credential, false);
            let read = connect(token, tenant)
                .and_then(|c| rt.block_on(c.count(Filter::default())).map(|_| ()));
            let want = match refusal(credential) {
                Some(401) => Some(ErrorCode::Unauthorized),
                Some(_) => Some(ErrorCode::Forbidden),
                None => None,
            };
            assert_eq!(
                write.map_err(code).err(),
                want.map(Some),
                "{front} write with {credential:?}"
            );
            assert_eq!(
                read.map_err(code).err(),
                want.map(Some),
                "{front} read with {credential:?}"
            );
            if want.is_some() {
                refused.push(mark);
            } else {
                accepted.push(mark);
            }
        }
    }

    // Syslog: plain from a network not allowed is not heard; from one
    // allowed (127.0.0.2), and over TLS with a client certificate of
    // team-a, it is, in team-a.
    let syslog = addresses.syslog.unwrap();
    let send_udp = |from: &str, mark: &str| {
        let socket = std::net::UdpSocket::bind(format!("{from}:0")).unwrap();
        socket
            .send_to(format!("<14>1 - h app - - - {mark}").as_bytes(), syslog)
            .unwrap();
    };
    send_udp("127.0.0.1", "markudprefused");
    send_udp("127.0.0.2", "markudpallowed");
    refused.push("markudprefused".into());
    accepted.push("markudpallowed".into());
    let send_tcp = |from: &str, mark: &str| {
        rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
            if let Ok(mut stream) = socket.connect(syslog).await {
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(format!("<14>1 - h app - - - {mark}\n").as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            }
        });
    };
    send_tcp("127.0.0.1", "marktcprefused");
    send_tcp("127.0.0.2", "marktcpallowed");
    refused.push("marktcprefused".into());
    accepted.push("marktcpallowed".into());
    let tls_config = |with_cert: bool| {
        use rustls::pki_types::pem::PemObject;
        if !with_cert {
            return lode_client::tls_client_config(&certs.join("ca.pem")).unwrap();
        }
        let mut roots = rustls::RootCertStore::empty();
        for ca in lode_server::tls::read_certs(&certs.join("ca.pem")).unwrap() {
            roots.add(ca).unwrap();
        }
        let chain = lode_server::tls::read_certs(&client_cert.cert).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&client_cert.key).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap()
    };
    let send_tls = |with_cert: bool, mark: &str| {
        let config = std::sync::Arc::new(tls_config(with_cert));
        rt.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addresses.syslog_tls.unwrap())
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            match tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
            {
                Ok(mut tls) => {
                    use tokio::io::AsyncWriteExt;
                    let message = format!("<14>1 - h app - - - {mark}");
                    let sent = tls
                        .write_all(format!("{} {message}", message.len()).as_bytes())
                        .await;
                    let closed = tls.shutdown().await;
                    eprintln!("syslog over tls ({mark}): {sent:?} {closed:?}");
                }
                Err(e) => eprintln!("syslog over tls ({mark}): {e}"),
            }
        });
    };
    send_tls(false, "marktlsrefused");
    send_tls(true, "marktlscertified");
    refused.push("marktlsrefused".into());
    accepted.push("marktlscertified".into());

    // What was written: every accepted marker once, in team-a; no refused
    // one anywhere; team-b holds nothing.
    let count_in = |tenants: &str, query: &str| {
        let caller = Caller {
            tenants: tenants.split(',').map(str::to_owned).collect(),
            ..Caller::everything()
        };
        let filter = Filter {
            query: query.to_owned(),
            ..Filter::default()
        };
        rt.block_on(service.count(&caller, filter)).unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count_in("team-a", "*") < accepted.len() as u64 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        assert!(service.wait_indexed(Duration::from_secs(10)));
    }
    for mark in &accepted {
        assert_eq!(
            count_in("team-a", mark),
            1,
            "{mark} written once, in team-a"
        );
    }
    for mark in &refused {
        assert_eq!(
            count_in("team-a,team-b,default", mark),
            0,
            "{mark} was refused and wrote nothing"
        );
    }
    assert_eq!(
        count_in("team-a", "*"),
        accepted.len() as u64,
        "team-a holds the accepted writes only"
    );
    assert_eq!(
        count_in("team-b,default", "*"),
        0,
        "no other tenant was written"
    );
    let (_, _, metrics) = http_with(
        http,
        "GET",
        "/metrics",
        &headers(Some(&tokens.read_a), None, "text/plain"),
        b"",
    );
    let metrics = String::from_utf8_lossy(&metrics);
    for front in [
        "http", "loki", "otlp", "bulk", "journal", "binary", "syslog",
    ] {
        let line = format!("lode_auth_failures_total{{source=\"{front}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{line} in the metrics"));
        assert!(n > 0, "refusals are counted for {front}");
    }
    let _ = std::io::stdout().flush();
    rt.block_on(server.shutdown()).unwrap();
}

/// Two tenants, one writing through Loki with an admin token and
/// `X-Scope-OrgID`, the other with a token of its own: every read path
/// (query, count, top, histogram, Loki's query_range, series, labels and
/// label values, Logs Drilldown's volumes, the binary
/// protocol's query and tail, export) shows each
/// only its own records; an admin reads both with `a|b`.
#[test]
fn tenants_never_see_each_others_records() {
    let dir = tempfile::tempdir().unwrap();
    let loopback: Option<SocketAddr> = "127.0.0.1:0".parse().ok();
    let mut config = Config {
        data: dir.path().to_owned(),
        listen: loopback,
        quic: None,
        http: loopback,
        syslog: None,
        ..Config::default()
    };
    config.auth.mode = "required".into();
    let rt = runtime();
    let server = rt.block_on(Server::start(config)).unwrap();
    let service = server.service();
    let admin = rt
        .block_on(service.create_token(
            &Caller::everything(),
            None,
            Scopes::parse("admin").unwrap(),
            None,
        ))
        .unwrap()
        .secret;
    let both = Scopes::parse("ingest,read").unwrap();
    let token_a = rt
        .block_on(service.create_token(&Caller::everything(), Some("team-a"), both, None))
        .unwrap()
        .secret;
    let token_b = rt
        .block_on(service.create_token(&Caller::everything(), Some("team-b"), both, None))
        .unwrap()
        .secret;
    let http = server.addresses().http.unwrap();
    let now = lode_engine::now_ns();
    let push = |token: &str, tenant: Option<&str>, service_name: &str, word: &str| {
        let values: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    r#"["{}","{word} {i}"]"#,
                    now - 60_000_000_000 + i * 1_000_000
                )
            })
            .collect();
        let body = format!(
            r#"{{"streams":[{{"stream":{{"service_name":"{service_name}","host":"h-{word}"}},"values":[{}]}}]}}"#,
            values.join(",")
        );
        let (status, _, answer) = http_with(
            http,
            "POST",
            "/loki/api/v1/push",
            &headers(Some(token), tenant, "application/json"),
            body.as_bytes(),
        );
        assert_eq!(status, 204, "{}", String::from_utf8_lossy(&answer));
    };
    push(&admin, Some("team-a"), "apple-shop", "apple");
    push(&token_b, None, "banana-shop", "banana");
    assert!(service.wait_indexed(Duration::from_secs(30)));
    let get = |token: &str, tenant: Option<&str>, path: &str| {
        let (status, _, body) = http_with(
            http,
            "GET",
            path,
            &headers(Some(token), tenant, "text/plain"),
            b"",
        );
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    };
    let reads = [
        "/api/v1/query?q=*&limit=1000",
        "/api/v1/top?field=service",
        "/api/v1/top?field=host",
        "/loki/api/v1/query_range?query=%7Bservice_name%3D~%22.%2B%22%7D&limit=1000",
        "/loki/api/v1/series",
        "/loki/api/v1/label/service_name/values",
        "/loki/api/v1/label/host/values",
        // Logs Drilldown's.
        "/loki/api/v1/index/volume?query=%7Bservice_name%3D~%22.%2B%22%7D",
        "/loki/api/v1/index/volume_range?query=%7Bservice_name%3D~%22.%2B%22%7D&step=60",
    ];
    for (token, mine, theirs) in [(&token_a, "apple", "banana"), (&token_b, "banana", "apple")] {
        for path in reads {
            let body = get(token, None, path);
            assert!(body.contains(mine), "{path} shows {mine}: {body}");
            assert!(!body.contains(theirs), "{path} hides {theirs}: {body}");
        }
        let count: serde_json::Value =
            serde_json::from_str(&get(token, None, "/api/v1/count")).unwrap();
        assert_eq!(count["count"], 30);
        let histogram: serde_json::Value =
            serde_json::from_str(&get(token, None, "/api/v1/histogram")).unwrap();
        let total: u64 = histogram["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(total, 30, "the histogram counts the tenant's own");
    }
    let both_count: serde_json::Value =
        serde_json::from_str(&get(&admin, Some("team-a|team-b"), "/api/v1/count")).unwrap();
    assert_eq!(both_count["count"], 60, "an admin reads both with a|b");

    // The binary protocol: a tenant's query and tail see its own only.
    let addr = server.addresses().tcp.unwrap().to_string();
    let connect = |token: &str| {
        let options = ClientOptions {
            token: Some(token.to_owned()),
            ..ClientOptions::default()
        };
        rt.block_on(Client::connect_tcp_with(&addr, options))
            .unwrap()
    };
    let (a, b) = (connect(&token_a), connect(&token_b));
    assert_eq!(a.tenant(), "team-a");
    let page = rt.block_on(a.query(Filter::default(), 1000, None)).unwrap();
    assert_eq!(page.records.len(), 30);
    assert!(
        page.records
            .iter()
            .all(|r| r.record.message.starts_with("apple") && r.tenant == "team-a")
    );
    rt.block_on(async {
        let mut tail = a.tail("*", None).await.unwrap();
        let record = |m: &str| lode_engine::LogRecord {
            message: m.to_owned(),
            ts: lode_engine::now_ns(),
            ..lode_engine::LogRecord::default()
        };
        b.append(&[record("banana live")]).await.unwrap();
        a.append(&[record("apple live")]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), tail.next())
            .await
            .expect("a tail frame")
            .unwrap()
            .unwrap();
        let messages: Vec<&str> = got.iter().map(|r| r.record.message.as_str()).collect();
        assert_eq!(
            messages,
            ["apple live"],
            "the tail skips the other tenant's record"
        );
    });

    // Export over the server, with each token.
    let lode = lode_exe();
    for (token, mine, theirs) in [(&token_a, "apple", "banana"), (&token_b, "banana", "apple")] {
        let out = std::process::Command::new(&lode)
            .args([
                "export",
                "-s",
                &addr,
                "--token",
                token,
                "--consistency",
                "linearizable",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.lines().count(),
            31,
            "{mine}'s 30 and its live one: {text}"
        );
        assert!(text.contains(mine) && !text.contains(theirs));
    }
    rt.block_on(server.shutdown()).unwrap();
}

/// A tenant past its ingest rate is answered 429 with `Retry-After` over
/// HTTP and `busy` over the binary protocol; another tenant is not held
/// back; the refusals are counted per tenant.
#[test]
fn a_tenant_past_its_rate_is_told_to_retry_later() {
    let dir = tempfile::tempdir().unwrap();
    let loopback: Option<SocketAddr> = "127.0.0.1:0".parse().ok();
    let mut config = Config {
        data: dir.path().to_owned(),
        listen: loopback,
        quic: None,
        http: loopback,
        syslog: None,
        ..Config::default()
    };
    config.tenant.insert(
        "team-a".into(),
        lode_server::tenants::TenantLimits {
            ingest_records_per_sec: 100,
            ..Default::default()
        },
    );
    let rt = runtime();
    let server = rt.block_on(Server::start(config)).unwrap();
    let http = server.addresses().http.unwrap();
    let lines = |n: usize| {
        (0..n)
            .map(|i| format!("{{\"message\":\"line {i}\"}}\n"))
            .collect::<String>()
    };
    let post = |tenant: &str, n: usize| {
        http_with(
            http,
            "POST",
            "/api/v1/ingest",
            &format!("X-Scope-OrgID: {tenant}\r\n"),
            lines(n).as_bytes(),
        )
    };
    assert_eq!(post("team-a", 100).0, 200, "a second's worth at once");
    let (status, head, body) = post("team-a", 50);
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    assert!(head.contains("retry-after: "), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("ingest_records_per_sec = 100"));
    assert_eq!(
        post("team-b", 1000).0,
        200,
        "another tenant is not held back"
    );
    let options = ClientOptions {
        tenant: Some("team-a".into()),
        ..ClientOptions::default()
    };
    let client = rt
        .block_on(Client::connect_tcp_with(
            &server.addresses().tcp.unwrap().to_string(),
            options,
        ))
        .unwrap();
    let records: Vec<lode_engine::LogRecord> = (0..200).map(crate::record_for).collect();
    match rt.block_on(client.append(&records)) {
        Err(lode_client::ClientError::Server { code, .. }) => {
            assert_eq!(code, Some(ErrorCode::Busy))
        }
        other => panic!("expected busy, got {other:?}"),
    }
    let (_, _, metrics) = http_with(http, "GET", "/metrics", "", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("lode_tenant_refused_total{tenant=\"team-a\"} 2\n"),
        "{metrics}"
    );
    assert!(metrics.contains("lode_tenant_ingested_records_total{tenant=\"team-b\"} 1000\n"));
    rt.block_on(server.shutdown()).unwrap();
}

/// The `lode` binary the workspace built beside this test binary.
fn lode_exe() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("lode")
}

/// `lode bench --secure` runs end to end on a small workload: a server
/// over HTTPS that requires a token takes a tenant's records and answers
/// every query as the plain one does (the benchmark fails otherwise).
#[test]
fn the_secure_benchmark_compares_like_with_like() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(lode_exe())
        .args(["bench", "--secure", "--records", "3000", "--batch", "500"])
        .args(["--runs", "2", "--queries", "3", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("https + token / http"), "{printed}");
    assert!(printed.contains("count level:error"), "{printed}");
}
