//! The search page (`/ui`) driven in headless Chromium by
//! `tests/ui/search_page.js` (playwright-core): the loghub samples as the
//! last hour's records, a query, the histogram, a facet, live tail and a
//! typo. The screenshot it saves is kept for a person to look at.

use std::process::Command;

#[test]
fn search_page_in_chromium() {
    let node = std::env::var("LODE_TEST_NODE").unwrap_or_else(|_| "/var/tmp/lode-test-node".into());
    assert!(
        std::path::Path::new(&node)
            .join("node_modules/playwright-core")
            .is_dir(),
        "playwright-core is not in {node}: run the tests through `tools/with-deps --test`"
    );
    // The samples spread over the last 50 minutes.
    let mut records = crate::search::loghub_records();
    let now = lode_engine::now_ns();
    let n = records.len() as i64;
    for (i, r) in records.iter_mut().enumerate() {
        r.ts = now - (n - i as i64) * (3_000_000_000_000 / n);
    }
    let dir = tempfile::tempdir().unwrap();
    let (rt, server) = crate::logql::serve(dir.path(), &records);
    let url = format!("http://{}", server.addresses().http.unwrap());
    let screenshot = std::env::var("LODE_SCREENSHOT").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("lode-search-page.png")
            .display()
            .to_string()
    });
    let out = Command::new("timeout")
        .args(["120", "node", "ui/search_page.js"])
        .env("LODE_URL", &url)
        .env("LODE_TEST_NODE", &node)
        .env("LODE_SCREENSHOT", &screenshot)
        .env("LODE_WORD", "error")
        .output()
        .expect("node (installed by tools/with-deps --test)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(
        out.status.success(),
        "the search page's script failed:\n{log}"
    );
    assert!(std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000));
    rt.block_on(server.shutdown()).unwrap();
}

/// The page over HTTPS on a server that asks for a token: it asks once,
/// keeps it for the tab, and shows that token's tenant's records only.
#[test]
fn search_page_over_https_with_a_token() {
    let node = std::env::var("LODE_TEST_NODE").unwrap_or_else(|_| "/var/tmp/lode-test-node".into());
    let dir = tempfile::tempdir().unwrap();
    let loopback = "127.0.0.1:0".parse().ok();
    let mut config = lode_server::Config {
        data: dir.path().to_owned(),
        listen: None,
        quic: None,
        http: loopback,
        syslog: None,
        ..lode_server::Config::default()
    };
    config.auth.mode = "required".into();
    config.tls.mode = "on".into();
    let rt = crate::server::runtime();
    let server = rt.block_on(lode_server::Server::start(config)).unwrap();
    let service = server.service();
    let admin = lode_server::Caller::everything();
    let as_tenant = |tenant: &str| lode_server::Caller {
        tenants: vec![tenant.to_owned()],
        ..lode_server::Caller::everything()
    };
    let record = |message: &str| lode_engine::LogRecord {
        ts: lode_engine::now_ns() - 60_000_000_000,
        message: message.to_owned(),
        ..lode_engine::LogRecord::default()
    };
    let token = rt.block_on(async {
        service
            .append_records(
                &as_tenant("team-a"),
                vec![record("alpha ours"), record("alpha too")],
                None,
            )
            .await
            .unwrap();
        service
            .append_records(&as_tenant("team-b"), vec![record("bravo theirs")], None)
            .await
            .unwrap();
        let scopes = lode_server::Scopes::parse("read").unwrap();
        service
            .create_token(&admin, Some("team-a"), scopes, None)
            .await
            .unwrap()
            .secret
    });
    assert!(service.wait_indexed(std::time::Duration::from_secs(30)));
    assert!(server.addresses().http_tls);
    let url = format!(
        "https://localhost:{}",
        server.addresses().http.unwrap().port()
    );
    let out = Command::new("timeout")
        .args(["120", "node", "ui/https_token.js"])
        .env("LODE_URL", &url)
        .env("LODE_TEST_NODE", &node)
        .env("LODE_TOKEN", &token)
        .env("LODE_WORD", "alpha")
        .env("LODE_OTHER_WORD", "bravo")
        .output()
        .expect("node (installed by tools/with-deps --test)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{log}");
    assert!(out.status.success(), "the page's script failed:\n{log}");
    rt.block_on(server.shutdown()).unwrap();
}
