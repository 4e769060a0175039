//! How records are printed: aligned and coloured on a terminal, plain
//! when piped, or as JSON lines, or the bare message.

use std::io::{IsTerminal, Write};

use lode_engine::{Level, Record, format_rfc3339};
use lode_tools::to_json_line;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Time, level, service, host and message, aligned (coloured on a
    /// terminal unless NO_COLOR is set).
    Default,
    /// One JSON object per line, with its seq.
    Jsonl,
    /// The message alone.
    Raw,
}

pub(crate) struct Printer {
    format: Format,
    color: bool,
    out: std::io::BufWriter<std::io::Stdout>,
    line: Vec<u8>,
}

fn level_color(level: &Level) -> &'static str {
    match level {
        Level::Fatal | Level::Error => "\x1b[1;31m",
        Level::Warn => "\x1b[33m",
        Level::Info => "\x1b[32m",
        Level::Debug => "\x1b[34m",
        _ => "\x1b[2m",
    }
}

const DIM: &str = "\x1b[2m";
const CYAN: &str = "\x1b[36m";
const RESET: &str = "\x1b[0m";

pub(crate) fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

impl Printer {
    pub(crate) fn new(format: Format) -> Printer {
        Printer {
            format,
            color: use_color(),
            out: std::io::BufWriter::new(std::io::stdout()),
            line: Vec::new(),
        }
    }

    pub(crate) fn print(&mut self, record: &Record) -> std::io::Result<()> {
        match self.format {
            Format::Jsonl => {
                self.line.clear();
                to_json_line(Some(record.seq), &record.log, &mut self.line);
                self.out.write_all(&self.line)
            }
            Format::Raw => writeln!(self.out, "{}", record.message),
            Format::Default => {
                // Milliseconds are enough to read; jsonl keeps every digit.
                let ts = format_rfc3339(record.ts);
                let ts = format!("{}{}", ts.get(..23).unwrap_or(&ts), "Z");
                let level = record.level.as_str().to_uppercase();
                let (dim, lc, cyan, reset) = if self.color {
                    (DIM, level_color(&record.level), CYAN, RESET)
                } else {
                    ("", "", "", "")
                };
                write!(
                    self.out,
                    "{dim}{ts}{reset} {lc}{level:<5}{reset} {cyan}{:<12}{reset} {dim}{:<12}{reset} {}",
                    record.service, record.host, record.message
                )?;
                for (key, value) in &record.attrs {
                    write!(self.out, " {dim}{key}={reset}{value}")?;
                }
                writeln!(self.out)
            }
        }
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Widest bar of [`bars`], in characters.
const BAR_WIDTH: usize = 50;

/// Rows of `label  count  bar`, the bars scaled to the largest count:
/// `lode top`'s values and `lode histogram`'s buckets.
pub(crate) fn bars(rows: &[(String, u64)]) -> String {
    let label = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let most = rows.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let digits = most.to_string().len();
    let mut out = String::new();
    for (name, n) in rows {
        let len = if most == 0 {
            0
        } else {
            // Any count above zero shows.
            ((*n as u128 * BAR_WIDTH as u128).div_ceil(u128::from(most))) as usize
        };
        out.push_str(&format!(
            "{name:<label$}  {n:>digits$}  {}\n",
            "█".repeat(len)
        ));
    }
    if rows.is_empty() {
        out.push_str("(no records)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::bars;

    #[test]
    fn bars_scale_to_the_largest_count() {
        let rows = vec![
            ("api".to_owned(), 100),
            ("db".to_owned(), 1),
            ("web".to_owned(), 0),
        ];
        let text = bars(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("api  100  {}", "█".repeat(50)));
        assert_eq!(lines[1], "db     1  █");
        assert_eq!(lines[2], "web    0  ");
        assert_eq!(bars(&[]), "(no records)\n");
    }
}
