//! Bulk export from a data directory: one consistent view (the records
//! durable when the export starts, oldest first), filtered by a query and a
//! time range with lode's brute-force matcher, written as JSON lines or raw
//! messages, compressed by the output's extension.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use std::collections::BTreeMap;
use std::ops::Range;

use lode_engine::{Engine, LogRecord, RecordRef};
use lode_protocol::json::{Fields, to_json_line, write_json_line};
use lode_query::{Prepared, Query};

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line (`seq` included), as `lode import` reads.
    Jsonl,
    /// The message alone.
    Raw,
}

/// Appends one record in `format` to `out`.
pub fn write_record(format: ExportFormat, seq: u64, record: &LogRecord, out: &mut Vec<u8>) {
    match format {
        ExportFormat::Jsonl => to_json_line(Some(seq), record, out),
        ExportFormat::Raw => {
            out.extend_from_slice(record.message.as_bytes());
            out.push(b'\n');
        }
    }
}

/// A writer for `path` (standard output for `None` or `-`), compressing
/// for `.gz` and `.zst`.
pub fn output(path: Option<&Path>) -> Result<Box<dyn Write + Send>, String> {
    let Some(path) = path.filter(|p| p.as_os_str() != "-") else {
        return Ok(Box::new(BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )));
    };
    let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = BufWriter::with_capacity(1 << 20, file);
    let name = path.to_string_lossy();
    Ok(if name.ends_with(".gz") {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else if name.ends_with(".zst") {
        Box::new(
            zstd::Encoder::new(file, 3)
                .map_err(|e| format!("{name}: {e}"))?
                .auto_finish(),
        )
    } else {
        Box::new(file)
    })
}

/// What to export.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Lode's query text; `*` for everything.
    pub query: Query,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

impl Selection {
    /// Every record: no filter to apply.
    pub fn is_everything(&self) -> bool {
        self.query == Query::All && self.since.is_none() && self.until.is_none()
    }

    pub fn matches(&self, record: &LogRecord) -> bool {
        self.since.is_none_or(|s| record.ts >= s)
            && self.until.is_none_or(|u| record.ts < u)
            && self.query.matches(&Prepared::new(record))
    }
}

/// Figures of an export.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exported {
    pub records: u64,
    pub scanned: u64,
    pub bytes: u64,
}

/// Seqs rendered by one worker at a time.
const BLOCK: u64 = 32_768;

/// Writes the selected records of `engine` to `out`, oldest first, from
/// the view of the moment it starts: records appended meanwhile are not
/// included. Blocks of records are rendered on every core and written in
/// order. `progress` is called with (records scanned, total, bytes
/// written) after each block.
pub fn export(
    engine: &Engine,
    selection: &Selection,
    format: ExportFormat,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64, u64),
) -> Result<Exported, String> {
    let (first, end) = (engine.first_seq(), engine.next_seq());
    let total = end.saturating_sub(first);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let blocks = (first..end)
        .step_by(BLOCK as usize)
        .map(move |start| start..(start + BLOCK).min(end));
    let mut done = Exported::default();
    std::thread::scope(|scope| -> Result<(), String> {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<(usize, Range<u64>)>(threads * 2);
        let (out_tx, out_rx) = crossbeam_channel::bounded(threads * 2);
        scope.spawn(move || {
            for job in blocks.enumerate() {
                if job_tx.send(job).is_err() {
                    return;
                }
            }
        });
        for _ in 0..threads {
            let (jobs, results) = (job_rx.clone(), out_tx.clone());
            scope.spawn(move || {
                for (i, range) in jobs {
                    let n = range.end - range.start;
                    let rendered = render(engine, selection, format, range).map(|(b, m)| (b, m, n));
                    if results.send((i, rendered)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((job_rx, out_tx));
        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (i, rendered) in out_rx.iter() {
            waiting.insert(i, rendered);
            while let Some(rendered) = waiting.remove(&next) {
                next += 1;
                let (bytes, matched, scanned) = rendered?;
                out.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
                done.records += matched;
                done.scanned += scanned;
                done.bytes += bytes.len() as u64;
                progress(done.scanned, total, done.bytes);
            }
        }
        Ok(())
    })?;
    out.flush().map_err(|e| format!("write: {e}"))?;
    Ok(done)
}

/// One block of records as bytes, and how many matched. Everything-queries
/// are written straight from the archived records, without decoding them.
fn render(
    engine: &Engine,
    selection: &Selection,
    format: ExportFormat,
    range: Range<u64>,
) -> Result<(Vec<u8>, u64), String> {
    let mut buf = Vec::with_capacity(8 << 20);
    let mut matched = 0;
    if selection.is_everything() {
        engine
            .visit(range, |seq, record| {
                write_archived(format, seq, record, &mut buf);
                matched += 1;
            })
            .map_err(|e| e.to_string())?;
        return Ok((buf, matched));
    }
    for record in engine.scan(range) {
        let record = record.map_err(|e| e.to_string())?;
        if selection.matches(&record.log) {
            write_record(format, record.seq, &record.log, &mut buf);
            matched += 1;
        }
    }
    Ok((buf, matched))
}

fn write_archived(format: ExportFormat, seq: u64, record: RecordRef<'_>, out: &mut Vec<u8>) {
    match format {
        ExportFormat::Jsonl => {
            let fields = Fields {
                seq: Some(seq),
                tenant: record.tenant,
                ts: record.timestamp(),
                level: record.level.as_str(),
                service: record.service.as_str(),
                host: record.host.as_str(),
                message: record.message.as_str(),
            };
            let attrs = record
                .attrs
                .iter()
                .map(|pair| (pair.0.as_str(), pair.1.as_str()));
            write_json_line(out, &fields, attrs);
        }
        ExportFormat::Raw => {
            out.extend_from_slice(record.message.as_str().as_bytes());
            out.push(b'\n');
        }
    }
}
