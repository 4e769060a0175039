//! `lode bench --grafana`: what Grafana's Explore asks of a Loki data
//! source over the last hour of `--records` records (a selector and a
//! line filter, newest 1000 lines; then the logs volume, counts by level
//! per minute), beside lode's own HTTP API asking the same question in
//! the same run (`/api/v1/query` for the lines; `/api/v1/top` of the
//! levels and a `/api/v1/histogram` per level for the volume). Both over
//! HTTP on one keep-alive connection, alternating; medians.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lode_client::Client;
use lode_engine::{EncodedBatch, now_ns};
use lode_tools::{Corpus, median};
use serde_json::Value;

use crate::CliError;
use crate::bench::{BenchArgs, TempDir, spawn_serve};
use crate::bench_http::{Endpoint, Session};

const HOUR_NS: i64 = 3_600_000_000_000;
const SELECTOR: &str = r#"{service_name="hdfs"}"#;
const WORD: &str = "block";

pub(crate) async fn bench_grafana(args: &BenchArgs) -> Result<(), CliError> {
    let temp = TempDir::new()?;
    let root = args.dir.clone().unwrap_or_else(|| temp.0.clone());
    let http = format!("127.0.0.1:{}", crate::bench_cluster::free_tcp()?);
    let flags: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--http",
        &http,
        "--quic",
        "off",
        "--syslog",
        "off",
    ]
    .map(str::to_owned)
    .to_vec();
    let (child, line) = spawn_serve(
        &root.join("grafana"),
        &flags,
        &crate::bench::background_config(&args.background),
    )?;
    let binary = crate::bench::field(&line, "binary (tcp)")?;
    let client = Client::connect_tcp(&binary).await?;
    let end = now_ns();
    let rate = ingest_last_hour(&client, args, end).await?;
    eprintln!(
        "ingested {} records at {rate:.0} records/s; indexing ...",
        args.records
    );
    let started = Instant::now();
    wait_indexed(&client).await?;
    eprintln!("indexed in {:.1} s", started.elapsed().as_secs_f64());

    let mut session = Endpoint::plain(&http).connect().map_err(CliError::new)?;
    let (start, end) = (end - HOUR_NS, end + 1);
    let asks = questions(start, end);
    let mut times: Vec<[Vec<f64>; 2]> = vec![[vec![], vec![]]; asks.len()];
    for round in 0..args.queries.max(1) {
        for (ask, spent) in asks.iter().zip(times.iter_mut()) {
            // Alternate which goes first.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                if let (Some(asking), Some(into)) = (ask.sides.get(side), spent.get_mut(side)) {
                    into.push(asking.run(&mut session)?);
                }
            }
        }
    }
    println!(
        "\nlode bench --grafana: {} records over the last hour, medians of {} rounds",
        args.records, args.queries
    );
    println!(
        "{:<44} {:>12} {:>12} {:>10}",
        "question (median ms)", "loki api", "lode api", "ratio"
    );
    for (ask, spent) in asks.iter().zip(times.iter_mut()) {
        let [loki, lode] = spent.each_mut().map(|v| median(v));
        println!(
            "{:<44} {loki:>12.3} {lode:>12.3} {:>9.2}x",
            ask.name,
            loki / lode
        );
        for side in &ask.sides {
            println!("  {}", side.describe());
        }
    }
    println!("(ratio: the Loki API's time over lode's own for the same answer)");
    let alone = loki_only(start, end);
    let mut spent: Vec<Vec<f64>> = vec![Vec::new(); alone.len()];
    for _ in 0..args.queries.max(1) {
        for ((_, path, params), into) in alone.iter().zip(spent.iter_mut()) {
            let started = Instant::now();
            session.get_json(path, params)?;
            into.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    println!(
        "\n{:<44} {:>12}",
        "Logs Drilldown and dashboards (median ms)", "loki api"
    );
    for ((name, path, params), times) in alone.iter().zip(spent.iter_mut()) {
        println!("{name:<44} {:>12.3}", median(times));
        println!("  GET {path} {}", show(params));
    }
    drop(child);
    Ok(())
}

/// A question's name, path and parameters.
type Asking = (&'static str, &'static str, Vec<(&'static str, String)>);

/// What Logs Drilldown asks for a service, and the metric queries
/// dashboards run, which lode's own API has no one request for: each
/// timed alone.
fn loki_only(start: i64, end: i64) -> Vec<Asking> {
    let range = || vec![("start", start.to_string()), ("end", end.to_string())];
    let with = |more: Vec<(&'static str, String)>| {
        let mut params = range();
        params.extend(more);
        params
    };
    vec![
        (
            "Drilldown: service list (volume by service)",
            "/loki/api/v1/index/volume",
            with(vec![
                ("query", r#"{service_name=~".+"}"#.to_owned()),
                ("limit", "100".to_owned()),
            ]),
        ),
        (
            "Drilldown: a service's fields",
            "/loki/api/v1/detected_fields",
            with(vec![
                ("query", SELECTOR.to_owned()),
                ("limit", "1000".to_owned()),
            ]),
        ),
        (
            "Drilldown: a service's patterns",
            "/loki/api/v1/patterns",
            with(vec![
                ("query", SELECTOR.to_owned()),
                ("step", "60s".to_owned()),
            ]),
        ),
        (
            "quantile_over_time of an unwrapped field",
            "/loki/api/v1/query_range",
            with(vec![
                (
                    "query",
                    format!("quantile_over_time(0.99, {SELECTOR} | unwrap pid [1m]) by (host)"),
                ),
                ("step", "60".to_owned()),
            ]),
        ),
        (
            "topk of rate by service",
            "/loki/api/v1/query_range",
            with(vec![
                (
                    "query",
                    r#"topk(5, sum by (service_name) (rate({service_name=~".+"}[1m])))"#.to_owned(),
                ),
                ("step", "60".to_owned()),
            ]),
        ),
    ]
}

/// `--records` corpus records with times spread evenly over the hour
/// before `end`, sent in batches as they are made (10M do not fit in
/// memory twice).
async fn ingest_last_hour(client: &Client, args: &BenchArgs, end: i64) -> Result<f64, CliError> {
    let mut corpus = Corpus::new(7);
    let n = args.records.max(1);
    let gap = HOUR_NS / n as i64;
    let started = Instant::now();
    let mut in_flight: VecDeque<lode_client::PendingAppend> = VecDeque::new();
    let mut made = 0usize;
    while made < n {
        let take = args.batch.max(1).min(n - made);
        let mut batch = corpus.take_records(take);
        for (i, record) in batch.iter_mut().enumerate() {
            record.ts = end - HOUR_NS + (made + i) as i64 * gap;
        }
        made += take;
        if in_flight.len() >= args.window.max(1)
            && let Some(pending) = in_flight.pop_front()
        {
            pending.wait().await?;
        }
        in_flight.push_back(client.submit_encoded(EncodedBatch::encode(&batch)?).await?);
    }
    for pending in in_flight {
        pending.wait().await?;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn wait_indexed(client: &Client) -> Result<(), CliError> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let stats = client.stats().await?;
        let get = |name: &str| stats.iter().find(|(k, _)| k == name).map_or(0, |(_, v)| *v);
        if get("indexed_upto") + 1 >= get("next_seq") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::new("the index did not catch up within an hour"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A question and its two askings: Loki's API, lode's.
struct Question {
    name: &'static str,
    sides: [Side; 2],
}

/// Requests whose answers together answer the question; the second and
/// later requests may take what the first answered (the levels).
enum Side {
    Lines {
        path: &'static str,
        params: Vec<(&'static str, String)>,
    },
    Volume {
        loki: Vec<(&'static str, String)>,
    },
    LodeVolume {
        range: (String, String),
    },
}

fn questions(start: i64, end: i64) -> Vec<Question> {
    let rfc = |ns: i64| lode_engine::format_rfc3339(ns);
    let range = (rfc(start), rfc(end));
    let loki_range = vec![("start", start.to_string()), ("end", end.to_string())];
    let mut lines = loki_range.clone();
    lines.extend([
        ("query", format!("{SELECTOR} |= \"{WORD}\"")),
        ("limit", "1000".to_owned()),
        ("direction", "backward".to_owned()),
    ]);
    let mut volume = loki_range;
    volume.extend([
        (
            "query",
            format!("sum by (level, detected_level) (count_over_time({SELECTOR} |= \"{WORD}\" | drop __error__[1m]))"),
        ),
        ("step", "60".to_owned()),
    ]);
    vec![
        Question {
            name: "newest 1000 lines: selector + line filter",
            sides: [
                Side::Lines {
                    path: "/loki/api/v1/query_range",
                    params: lines,
                },
                Side::Lines {
                    path: "/api/v1/query",
                    params: vec![
                        ("q", format!("service:hdfs {WORD}")),
                        ("since", range.0.clone()),
                        ("until", range.1.clone()),
                        ("limit", "1000".to_owned()),
                    ],
                },
            ],
        },
        Question {
            name: "logs volume: by level, per minute",
            sides: [Side::Volume { loki: volume }, Side::LodeVolume { range }],
        },
    ]
}

impl Side {
    /// Asks; the time it took, ms.
    fn run(&self, http: &mut Session) -> Result<f64, CliError> {
        let started = Instant::now();
        match self {
            Side::Lines { path, params } => {
                let answer = http.get_json(path, params)?;
                let lines = count_lines(&answer);
                if lines != 1000 {
                    return Err(CliError::new(format!(
                        "{path}: {lines} lines, expected 1000"
                    )));
                }
            }
            Side::Volume { loki } => {
                http.get_json("/loki/api/v1/query_range", loki)?;
            }
            Side::LodeVolume { range } => {
                let q = format!("service:hdfs {WORD}");
                let bounds = [("since", range.0.clone()), ("until", range.1.clone())];
                let mut params = vec![("q", q.clone()), ("field", "level".to_owned())];
                params.extend(bounds.clone());
                let levels = http.get_json("/api/v1/top", &params)?;
                for level in levels
                    .get("values")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let level = level
                        .get("value")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let mut params = vec![
                        ("q", format!("{q} level:{level}")),
                        ("width", "60000000000".to_owned()),
                    ];
                    params.extend(bounds.clone());
                    http.get_json("/api/v1/histogram", &params)?;
                }
            }
        }
        Ok(started.elapsed().as_secs_f64() * 1e3)
    }

    fn describe(&self) -> String {
        match self {
            Side::Lines { path, params } => format!("GET {path} {}", show(params)),
            Side::Volume { loki } => format!("GET /loki/api/v1/query_range {}", show(loki)),
            Side::LodeVolume { .. } => format!(
                "GET /api/v1/top field=level q='service:hdfs {WORD}', then /api/v1/histogram q='service:hdfs {WORD} level:L' width=1m per level"
            ),
        }
    }
}

fn show(params: &[(&str, String)]) -> String {
    params
        .iter()
        .filter(|(k, _)| !matches!(*k, "start" | "end" | "since" | "until"))
        .map(|(k, v)| format!("{k}='{v}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines in a Loki `streams` answer or a lode page.
fn count_lines(answer: &Value) -> usize {
    if let Some(records) = answer.get("records").and_then(Value::as_array) {
        return records.len();
    }
    answer
        .pointer("/data/result")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| {
            s.get("values")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        })
        .sum()
}
