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
