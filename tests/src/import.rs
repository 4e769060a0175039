//! Import parsers against the loghub samples' ground truth (their
//! `*_structured.csv`), with `--format auto` and with a user's `regex:`.

use lode_engine::{Level, LogRecord};
use lode_protocol::json::Shape;
use lode_protocol::lines::{Format, Line, LineParser, Options, detect};

pub(crate) const LOGHUB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/loghub");

/// Which record field a ground-truth column is compared with.
#[derive(Clone, Copy)]
enum Field {
    Level,
    Service,
    Host,
    Message,
}

/// Per sample: the columns compared and the regex a user would write.
/// loghub's headers misname two columns: Linux's "Level" and OpenSSH's
/// "Component" hold the host name.
/// Sample name, compared (column, field) pairs, the user's regex.
type Sample = (&'static str, &'static [(&'static str, Field)], &'static str);

const SAMPLES: &[Sample] = &[
    (
        "Apache",
        &[("Level", Field::Level), ("Content", Field::Message)],
        r"^\[(?P<ts>[^\]]+)\] \[(?P<level>\w+)\] (?P<message>.*)$",
    ),
    (
        "HDFS",
        &[
            ("Level", Field::Level),
            ("Component", Field::Service),
            ("Content", Field::Message),
        ],
        r"^(?P<ts>\d{6} \d{6}) (?P<pid>\d+) (?P<level>\w+) (?P<service>[^:]+): (?P<message>.*)$",
    ),
    (
        "Hadoop",
        &[
            ("Level", Field::Level),
            ("Component", Field::Service),
            ("Content", Field::Message),
        ],
        r"^(?P<ts>\S+ \S+) (?P<level>\w+) \[(?P<thread>[^\]]*)\] (?P<service>[^:\s]+): ?(?P<message>.*)$",
    ),
    (
        "HealthApp",
        &[("Component", Field::Service), ("Content", Field::Message)],
        r"^(?P<ts>[^|]+)\|(?P<service>[^|]*)\|(?P<pid>[^|]*)\|(?P<message>.*)$",
    ),
    (
        "Linux",
        &[
            ("Level", Field::Host),
            ("Component", Field::Service),
            ("Content", Field::Message),
        ],
        r"^(?P<ts>\w{3} [ \d]\d \S+) (?P<host>\S+) (?P<service>[^\[:]+?)(?:\[(?P<pid>\d+)\])?: ?(?P<message>.*)$",
    ),
    (
        "OpenSSH",
        &[("Component", Field::Host), ("Content", Field::Message)],
        r"^(?P<ts>\w{3} [ \d]\d \S+) (?P<host>\S+) (?P<service>[^\[:]+)\[(?P<pid>\d+)\]: (?P<message>.*)$",
    ),
    (
        "Proxifier",
        &[("Program", Field::Service), ("Content", Field::Message)],
        r"^\[(?P<ts>[^\]]+)\] (?P<service>.+?) - (?P<message>.*)$",
    ),
    (
        "Spark",
        &[
            ("Level", Field::Level),
            ("Component", Field::Service),
            ("Content", Field::Message),
        ],
        r"^(?P<ts>\S+ \S+) (?P<level>\w+) (?P<service>[^:]+): (?P<message>.*)$",
    ),
];

/// One CSV row: fields split on commas outside double quotes, `""` inside
/// quotes is a quote.
fn csv_row(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

fn truth(sample: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(format!("{LOGHUB}/{sample}_2k.log_structured.csv")).unwrap();
    let mut lines = text.lines();
    let header = csv_row(lines.next().unwrap());
    (header, lines.map(csv_row).collect())
}

fn agrees(record: &LogRecord, field: Field, expected: &str) -> bool {
    let expected = expected.trim();
    match field {
        Field::Level => record.level == Level::parse(expected),
        Field::Service => record.service.trim() == expected,
        Field::Host => record.host.trim() == expected,
        Field::Message => record.message.trim() == expected,
    }
}

/// Share of lines whose every compared field equals the ground truth.
fn accuracy(sample: &str, columns: &[(&str, Field)], format: Format) -> f64 {
    let log = std::fs::read_to_string(format!("{LOGHUB}/{sample}_2k.log")).unwrap();
    let (header, rows) = truth(sample);
    let mut parser = LineParser::new(format, Options::default(), 1_767_225_600_000_000_000);
    let mut right = 0;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), rows.len(), "{sample}: one truth row per line");
    for (line, row) in lines.iter().zip(&rows) {
        let Line::Record(record) = parser.parse(line) else {
            continue;
        };
        let all = columns.iter().all(|(column, field)| {
            let at = header.iter().position(|h| h == column).unwrap();
            agrees(&record, *field, &row[at])
        });
        right += usize::from(all);
    }
    right as f64 / rows.len() as f64
}

#[test]
fn loghub_samples_parse_like_their_ground_truth() {
    let mut report = Vec::new();
    let mut failed = false;
    for (sample, columns, pattern) in SAMPLES {
        let log = std::fs::read_to_string(format!("{LOGHUB}/{sample}_2k.log")).unwrap();
        let head: Vec<&str> = log.lines().take(200).collect();
        let auto =
            detect(&head, &Shape::default()).unwrap_or_else(|| panic!("{sample}: no layout"));
        let auto_name = auto.name();
        let auto = accuracy(sample, columns, auto);
        let regex = Format::parse(&format!("regex:{pattern}"), Shape::default()).unwrap();
        let regex = accuracy(sample, columns, regex);
        report.push(format!(
            "{sample:<10} auto ({auto_name}): {:.2}%  regex: {:.2}%",
            auto * 100.0,
            regex * 100.0
        ));
        failed |= auto < 0.99 || regex < 0.99;
    }
    eprintln!("{}", report.join("\n"));
    assert!(!failed, "under 99%:\n{}", report.join("\n"));
}

mod bulk {
    //! Export then import gives the same records; a SIGKILL during an
    //! embedded import leaves a prefix of the input, at least up to the
    //! last checkpoint reported.

    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use lode_engine::{Engine, Level, LogRecord, Options};
    use lode_protocol::json::Shape;
    use lode_query::Query;
    use lode_tools::export::{self, ExportFormat, Selection};
    use lode_tools::import::{self, EngineSink, ImportOptions, Progress, Quiet};
    use lode_tools::{Corpus, SplitMix64, to_json_line};

    fn options(checkpoint: u64) -> ImportOptions {
        ImportOptions {
            format: "auto".into(),
            shape: Shape::default(),
            lines: lode_protocol::lines::Options::default(),
            strict: false,
            rejects: None,
            batch: 1000,
            checkpoint,
            threads: 2,
            now: 1_767_225_600_000_000_000,
        }
    }

    fn tricky() -> Vec<LogRecord> {
        vec![
            LogRecord {
                ts: -1,
                level: Level::Other("NOTICE-ish".into()),
                service: "quote\"s".into(),
                host: "ünïcødé".into(),
                attrs: vec![
                    ("k\n".into(), "v\\".into()),
                    ("empty".into(), String::new()),
                ],
                message: "line one\nline two\ttab \u{1} control".into(),
                tenant: String::new(),
            },
            LogRecord::default(),
        ]
    }

    fn all(engine: &Engine) -> Vec<LogRecord> {
        engine.scan(..).map(|r| r.unwrap().log).collect()
    }

    fn export_to(engine: &Engine, path: &Path) {
        let selection = Selection {
            query: Query::All,
            since: None,
            until: None,
        };
        let mut out = export::output(Some(path)).unwrap();
        let done = export::export(
            engine,
            &selection,
            ExportFormat::Jsonl,
            &mut out,
            &mut |_, _, _| {},
        )
        .unwrap();
        drop(out);
        assert_eq!(done.records, engine.stats().records);
    }

    #[test]
    fn export_then_import_gives_the_same_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut records = tricky();
        records.extend(Corpus::new(9).take_records(100_000));
        let engine = Engine::open(dir.path().join("a"), Options::default()).unwrap();
        for batch in records.chunks(7_000) {
            engine.append(batch).unwrap();
        }
        engine.seal().unwrap();
        engine.append(&Corpus::new(10).take_records(500)).unwrap(); // some still in the WAL
        let original = all(&engine);
        for name in ["all.jsonl", "all.jsonl.zst", "all.jsonl.gz"] {
            let file = dir.path().join(name);
            export_to(&engine, &file);
            let target = dir.path().join(format!("from-{name}"));
            let mut sink = EngineSink::open(&target, 2).unwrap();
            let report = import::import(&[file], &options(1_000_000), &mut sink, &Quiet).unwrap();
            sink.close().unwrap();
            assert_eq!(
                (report.records, report.rejected),
                (original.len() as u64, 0),
                "{name}"
            );
            assert_eq!(report.format, "jsonl");
            let copy = Engine::open(&target, Options::default()).unwrap();
            let imported = all(&copy);
            let first_difference = imported.iter().zip(&original).position(|(a, b)| a != b);
            assert_eq!(first_difference, None, "{name}: the same records, in order");
            assert_eq!(imported.len(), original.len());
        }
        // A filtered export holds exactly the matching records.
        let selection = Selection {
            query: lode_query::parse("level:>=warn service:openssh").unwrap(),
            since: None,
            until: Some(1_767_225_700_000_000_000),
        };
        let mut out = Vec::new();
        let done = export::export(
            &engine,
            &selection,
            ExportFormat::Raw,
            &mut out,
            &mut |_, _, _| {},
        )
        .unwrap();
        let expected: Vec<&LogRecord> = original.iter().filter(|r| selection.matches(r)).collect();
        assert!(done.records > 0);
        assert_eq!(done.records as usize, expected.len());
        let lines = String::from_utf8(out).unwrap();
        let first = lines.lines().next().unwrap();
        assert_eq!(first, expected[0].message);
    }

    const DIR_VAR: &str = "LODE_IMPORT_KILL_DIR";
    const FILE_VAR: &str = "LODE_IMPORT_KILL_FILE";

    struct Printing;

    impl Progress for Printing {
        fn bytes(&self, _: u64) {}
        fn records(&self, _: u64) {}
        fn checkpoint(&self, durable: u64, _: u64) {
            println!("checkpoint {durable}");
        }
    }

    /// The importing process; runs only when the kill test starts it.
    #[test]
    #[ignore = "run by import::bulk::sigkill_during_embedded_import in a child process"]
    fn import_child() {
        let (Ok(dir), Ok(file)) = (std::env::var(DIR_VAR), std::env::var(FILE_VAR)) else {
            return;
        };
        crate::die_with_parent();
        let mut sink = EngineSink::open(Path::new(&dir), 2).unwrap();
        println!("ready");
        import::import(
            &[PathBuf::from(file)],
            &options(20_000),
            &mut sink,
            &Printing,
        )
        .unwrap();
        sink.close().unwrap();
        println!("done");
    }

    #[test]
    fn sigkill_during_embedded_import() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.jsonl");
        let records = Corpus::new(3).take_records(300_000);
        let mut text = Vec::new();
        for record in &records {
            to_json_line(None, record, &mut text);
        }
        std::fs::write(&input, text).unwrap();
        let mut rng = SplitMix64::new(77);
        let started = Instant::now();
        for round in 0..10 {
            let data = dir.path().join(format!("data-{round}"));
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "import::bulk::import_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DIR_VAR, &data)
                .env(FILE_VAR, &input)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                let mut reported = 0u64;
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.contains("ready") {
                        let _ = tx.send(());
                    }
                    if let Some(n) = line
                        .split("checkpoint ")
                        .nth(1)
                        .and_then(|n| n.trim().parse().ok())
                    {
                        reported = n;
                    }
                }
                reported
            });
            let _ = rx.recv_timeout(Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(rng.below(600)));
            child.kill().unwrap();
            child.wait().unwrap();
            let reported = reader.join().unwrap();
            let engine = Engine::open(&data, Options::default()).unwrap();
            let found = all(&engine);
            assert!(
                found.len() as u64 >= reported,
                "round {round}: {reported} reported durable, {} found",
                found.len()
            );
            assert!(found.len() <= records.len());
            assert!(
                found.iter().zip(&records).all(|(a, b)| a == b),
                "round {round}: the records found are a prefix of the input"
            );
            assert!(started.elapsed() < Duration::from_secs(180), "too slow");
        }
    }
}
