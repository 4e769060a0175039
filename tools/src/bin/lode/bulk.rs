//! `lode import` and `lode export`: the CLI around `lode_tools::import`
//! and `lode_tools::export`, with progress bars and summaries.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lode_client::Batcher;
use lode_engine::{Engine, LogRecord, Options, now_ns};
use lode_protocol::json::Shape;
use lode_protocol::lines;
use lode_tools::export::{self, ExportFormat, Selection};
use lode_tools::import::{self, EngineSink, ImportOptions, Progress, Report, Sink};

use crate::backend::{Backend, Target};
use crate::{CliError, Range, time_range};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ImportArgs {
    /// Files to import: plain, .gz or .zst; - reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// auto, jsonl, syslog, logfmt, regex:PATTERN (named groups ts, level,
    /// service, host, message; others become attrs), or a layout: log4j,
    /// apache-error, hdfs, spark, syslog-file, healthapp, proxifier.
    #[arg(long, short = 'f', default_value = "auto")]
    format: String,
    /// Service of records whose lines name none.
    #[arg(long)]
    service: Option<String>,
    /// strftime pattern of the timestamps (default: the common layouts are
    /// tried): '%d/%m/%Y %H:%M:%S'.
    #[arg(long)]
    ts_format: Option<String>,
    /// jsonl: the field holding the timestamp (before ts, @timestamp ...).
    #[arg(long)]
    ts_field: Option<String>,
    /// jsonl: the field holding the message.
    #[arg(long)]
    msg_field: Option<String>,
    /// jsonl: the field holding the level.
    #[arg(long)]
    level_field: Option<String>,
    /// Lines that do not start a record (a stack trace) join the record
    /// before them.
    #[arg(long)]
    multiline: bool,
    /// Stop at the first line that cannot be read.
    #[arg(long)]
    strict: bool,
    /// Write rejected lines to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Records per batch.
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Records between checkpoints (everything before one is durable).
    #[arg(long, default_value_t = 2_000_000)]
    checkpoint: u64,
    /// Parser threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ExportArgs {
    /// Which records; * for all.
    #[arg(default_value = "*")]
    query: String,
    #[command(flatten)]
    range: Range,
    #[arg(long, short = 'f', value_enum, default_value_t = Output::Jsonl)]
    format: Output,
    /// Output file (.gz and .zst compress); standard output by default.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Jsonl,
    Raw,
}

fn export_format(output: Output) -> ExportFormat {
    match output {
        Output::Jsonl => ExportFormat::Jsonl,
        Output::Raw => ExportFormat::Raw,
    }
}

fn bar(total: Option<u64>, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden());
    }
    let template = match total {
        Some(_) => format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} {unit} ({{binary_bytes_per_sec}}, ETA {{eta}}) {{msg}}"
        ),
        None => format!(
            "{{spinner}} [{{elapsed_precise}}] {{bytes}} {unit} ({{binary_bytes_per_sec}}) {{msg}}"
        ),
    };
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

struct ImportProgress {
    bar: ProgressBar,
    started: Instant,
    quiet: bool,
    last_records: AtomicU64,
}

impl Progress for ImportProgress {
    fn bytes(&self, done: u64) {
        self.bar.set_position(done);
    }

    fn records(&self, total: u64) {
        // Text updates cost: every ~64 Ki records.
        if total - self.last_records.load(Ordering::Relaxed) >= 65_536 {
            self.last_records.store(total, Ordering::Relaxed);
            let rate = total as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            self.bar
                .set_message(format!("{total} records, {rate:.0}/s"));
        }
    }

    fn checkpoint(&self, durable: u64, lines: u64) {
        let text = format!(
            "checkpoint: {durable} records durable (all from the first {lines} input lines)"
        );
        if self.quiet {
            eprintln!("lode: {text}");
        } else {
            self.bar.println(text);
        }
    }
}

/// The online path: a [`Batcher`] to a server; a checkpoint waits for
/// every acknowledgement.
struct ServerSink {
    batcher: Batcher,
    runtime: tokio::runtime::Handle,
}

impl Sink for ServerSink {
    fn append(&mut self, records: Vec<LogRecord>) -> Result<(), String> {
        self.runtime
            .block_on(self.batcher.extend(records))
            .map_err(|e| e.to_string())
    }

    fn checkpoint(&mut self) -> Result<u64, String> {
        self.runtime
            .block_on(self.batcher.flush())
            .map_err(|e| e.to_string())
    }
}

/// The default shape with the fields named on the command line first in
/// their lists, and out of every other list (`--msg-field time`: the
/// message, not the time).
fn shape(args: &ImportArgs) -> Shape {
    let mut shape = Shape::default();
    for name in [&args.ts_field, &args.msg_field, &args.level_field]
        .into_iter()
        .flatten()
    {
        for list in [
            &mut shape.ts,
            &mut shape.level,
            &mut shape.service,
            &mut shape.host,
            &mut shape.message,
        ] {
            list.retain(|n| n != name);
        }
    }
    for (given, list) in [
        (&args.ts_field, &mut shape.ts),
        (&args.msg_field, &mut shape.message),
        (&args.level_field, &mut shape.level),
    ] {
        if let Some(name) = given {
            list.insert(0, name.clone());
        }
    }
    shape
}

pub(crate) async fn import_command(args: ImportArgs) -> Result<(), CliError> {
    let options = ImportOptions {
        format: args.format.clone(),
        shape: shape(&args),
        lines: lines::Options {
            ts_format: args.ts_format.clone(),
            service: args.service.clone(),
            multiline: args.multiline,
        },
        strict: args.strict,
        rejects: args.rejects.clone(),
        batch: args.batch.max(1),
        checkpoint: args.checkpoint.max(1),
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        now: now_ns(),
    };
    let total = import::total_bytes(&args.files);
    let progress = ImportProgress {
        bar: bar(total, "read"),
        started: Instant::now(),
        quiet: !std::io::stderr().is_terminal(),
        last_records: AtomicU64::new(0),
    };
    let files = args.files.clone();
    let report = match &args.target.data {
        Some(data) => {
            let data = data.clone();
            tokio::task::spawn_blocking(
                move || -> Result<(Report, Option<std::time::Duration>), String> {
                    let mut sink = EngineSink::open(&data, options.threads)?;
                    let report = import::import(&files, &options, &mut sink, &progress);
                    progress.bar.finish_and_clear();
                    sink.close()?;
                    let report = report?;
                    let indexing = build_index(&data, progress.quiet)?;
                    Ok((report, Some(indexing)))
                },
            )
            .await
            .map_err(|e| CliError::new(e.to_string()))?
        }
        None => {
            let backend = Backend::connect(&args.target).await?;
            let Some(batcher) = backend.batcher(options.batch).await? else {
                return Err(CliError::new("expected a server"));
            };
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(
                move || -> Result<(Report, Option<std::time::Duration>), String> {
                    let mut sink = ServerSink { batcher, runtime };
                    let report = import::import(&files, &options, &mut sink, &progress);
                    progress.bar.finish_and_clear();
                    report.map(|r| (r, None))
                },
            )
            .await
            .map_err(|e| CliError::new(e.to_string()))?
        }
    }
    .map_err(CliError::new)?;
    let (report, indexing) = report;
    summary(&report, total);
    if let Some(indexing) = indexing {
        eprintln!("  indexed in {indexing:.2?} more: searchable now");
    }
    Ok(())
}

/// Brings the directory's index up to its records, so that the import
/// leaves it searchable at once (the next open would do it otherwise,
/// as long again); shows its progress; returns how long it took.
fn build_index(data: &std::path::Path, quiet: bool) -> Result<std::time::Duration, String> {
    let started = Instant::now();
    let config = lode_server::Config {
        data: data.to_owned(),
        ..lode_server::Config::default()
    };
    let service = lode_server::Service::open(&config).map_err(|e| e.to_string())?;
    let bar = bar(None, "indexed");
    while !service.wait_indexed(std::time::Duration::from_millis(200)) {
        if !quiet {
            let lag = service.index().stats().lag;
            bar.set_message(format!("indexing: {lag} records to go"));
            bar.tick();
        }
    }
    bar.finish_and_clear();
    service.close().map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}

fn summary(report: &Report, bytes: Option<u64>) {
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let mb = bytes.map_or(String::new(), |b| {
        format!(", {:.1} MB/s", b as f64 / 1e6 / secs)
    });
    eprintln!(
        "imported {} records from {} lines in {:.2?} ({:.0} records/s{mb}), format {}",
        report.records,
        report.lines,
        report.elapsed,
        report.records as f64 / secs,
        report.format
    );
    if report.rejected > 0 {
        eprintln!("  {} lines rejected; the first:", report.rejected);
        for (file, line, reason) in &report.first_rejections {
            eprintln!("    {file}:{line}: {reason}");
        }
    }
    if report.continuations > 0 {
        eprintln!(
            "  {} lines joined the record before them",
            report.continuations
        );
    }
    if report.defaulted_ts > 0 {
        eprintln!(
            "  {} records had no timestamp and took the previous record's (or the import time)",
            report.defaulted_ts
        );
    }
}

pub(crate) async fn export_command(args: ExportArgs) -> Result<(), CliError> {
    let (since, until) = time_range(&args.range)?;
    let format = export_format(args.format);
    let started = Instant::now();
    let mut out = export::output(args.output.as_deref()).map_err(CliError::new)?;
    let (records, bytes) = match &args.target.data {
        Some(data) => {
            // A directory's every tenant is there: the export takes the
            // one `--tenant` names (several: a,b), the default one without.
            let tenants = match &args.target.tenant {
                Some(text) => lode_protocol::auth::tenants(text).map_err(CliError::new)?,
                None => vec![lode_protocol::auth::DEFAULT_TENANT.to_owned()],
            };
            let query = lode_index::scoped(&args.query, Some(&tenants))
                .map_err(|e| CliError::new(format!("query {e}")))?;
            let selection = Selection {
                query,
                since,
                until,
            };
            let data = data.clone();
            tokio::task::spawn_blocking(move || -> Result<(u64, u64), String> {
                let engine = Engine::open(&data, Options::default()).map_err(|e| e.to_string())?;
                let bar = bar(None, "written");
                let done = export::export(
                    &engine,
                    &selection,
                    format,
                    &mut out,
                    &mut |scanned, total, bytes| {
                        bar.set_position(bytes);
                        bar.set_message(format!("{scanned}/{total} records scanned"));
                    },
                )?;
                bar.finish_and_clear();
                engine.close().map_err(|e| e.to_string())?;
                Ok((done.records, done.bytes))
            })
            .await
            .map_err(|e| CliError::new(e.to_string()))?
            .map_err(CliError::new)?
        }
        None => export_remote(&args, since, until, format, &mut out).await?,
    };
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if std::io::stderr().is_terminal() || args.output.is_some() {
        eprintln!(
            "exported {records} records, {:.1} MB in {:.2?} ({:.1} MB/s)",
            bytes as f64 / 1e6,
            started.elapsed(),
            bytes as f64 / 1e6 / secs
        );
    }
    Ok(())
}

/// From a server: query pages through the cursor, newest first (the
/// binary protocol has no oldest-first scan yet).
async fn export_remote(
    args: &ExportArgs,
    since: Option<i64>,
    until: Option<i64>,
    format: ExportFormat,
    out: &mut Box<dyn std::io::Write + Send>,
) -> Result<(u64, u64), CliError> {
    let backend = Backend::connect(&args.target).await?;
    let filter = lode_client::Filter {
        query: args.query.clone(),
        since,
        until,
    };
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut cursor = None;
    let mut buf = Vec::new();
    loop {
        let page = backend.query(filter.clone(), 10_000, cursor).await?;
        for record in &page.records {
            export::write_record(format, record.seq, &record.log, &mut buf);
        }
        records += page.records.len() as u64;
        bytes += buf.len() as u64;
        out.write_all(&buf)?;
        buf.clear();
        match page.next_cursor {
            Some(next) if !page.records.is_empty() => cursor = Some(next),
            _ => break,
        }
    }
    out.flush()?;
    backend.close()?;
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        import: ImportArgs,
    }

    /// A field named on the command line is taken out of every other
    /// list: `--msg-field time` is the message, not the time.
    #[test]
    fn a_named_field_leaves_the_other_lists() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "import",
            "--msg-field",
            "time",
            "--level-field",
            "sev",
            "f.jsonl",
        ])
        .unwrap();
        let shape = shape(&cli.import);
        assert_eq!(shape.message.first().map(String::as_str), Some("time"));
        assert!(!shape.ts.iter().any(|n| n == "time"));
        assert_eq!(shape.level.first().map(String::as_str), Some("sev"));
        assert!(shape.ts.iter().any(|n| n == "ts"));
    }
}
