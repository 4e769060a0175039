//! Bulk import: files (plain, `.gz`, `.zst`, or standard input) read line
//! by line, parsed on every core, settled in order (carried timestamps,
//! multi-line records), and handed in batches to a [`Sink`]: the embedded
//! engine (no fsync per batch; a seal at each checkpoint) or a server.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;
use lode_engine::{AppendTicket, Durability, EncodedBatch, Engine, LogRecord, Options};
use lode_protocol::json::Shape;
use lode_protocol::lines::{self, Format, Line, LineParser, Raw};

/// Where imported records go.
pub trait Sink {
    /// Takes a batch (it may be acknowledged later).
    fn append(&mut self, records: Vec<LogRecord>) -> Result<(), String>;
    /// Makes everything appended so far durable; returns how many records
    /// that is in all.
    fn checkpoint(&mut self) -> Result<u64, String>;
}

/// The offline path: an engine opened in this process, appends written
/// without an fsync each (`Durability::Buffered`), the WAL synced at every
/// checkpoint. A kill at any moment leaves a prefix of the import:
/// everything up to the last checkpoint reported, and perhaps more.
/// Segments are sealed in the background as they fill, at low priority;
/// what is left is sealed when the directory is next opened.
#[derive(Debug)]
pub struct EngineSink {
    engine: Engine,
    /// Batches to encode, numbered; encoded batches come back numbered.
    to_encode: Option<crossbeam_channel::Sender<(u64, Vec<LogRecord>)>>,
    encoded: crossbeam_channel::Receiver<(u64, Result<EncodedBatch, String>)>,
    encoders: Vec<std::thread::JoinHandle<()>>,
    /// Encoded batches that arrived ahead of their turn.
    waiting: BTreeMap<u64, Result<EncodedBatch, String>>,
    sent: u64,
    submitted: u64,
    tickets: VecDeque<AppendTicket>,
    appended: u64,
}

/// Batches in flight to the engine's writer.
const WINDOW: usize = 8;

impl EngineSink {
    /// Opens the engine; batches are encoded (and their records freed) on
    /// `threads` threads, then handed to the log in order.
    pub fn open(data: &Path, threads: usize) -> Result<EngineSink, String> {
        let options = Options {
            durability: Durability::Buffered {
                window: Duration::from_secs(1),
            },
            ..Options::default()
        };
        let engine = Engine::open(data, options).map_err(|e| e.to_string())?;
        let threads = threads.max(1);
        let (to_encode, jobs) = bounded::<(u64, Vec<LogRecord>)>(threads * 2);
        let (done, encoded) = bounded(threads * 2 + WINDOW);
        let encoders = (0..threads)
            .map(|_| {
                let (jobs, done) = (jobs.clone(), done.clone());
                std::thread::spawn(move || {
                    for (order, records) in jobs {
                        let batch = EncodedBatch::encode(&records).map_err(|e| e.to_string());
                        drop(records);
                        if done.send((order, batch)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Ok(EngineSink {
            engine,
            to_encode: Some(to_encode),
            encoded,
            encoders,
            waiting: BTreeMap::new(),
            sent: 0,
            submitted: 0,
            tickets: VecDeque::new(),
            appended: 0,
        })
    }

    pub fn close(mut self) -> Result<u64, String> {
        let durable = self.checkpoint()?;
        self.to_encode = None;
        for encoder in self.encoders.drain(..) {
            let _ = encoder.join();
        }
        self.engine.close().map_err(|e| e.to_string())?;
        Ok(durable)
    }

    fn settle_one(&mut self) -> Result<(), String> {
        if let Some(ticket) = self.tickets.pop_front() {
            self.appended += ticket.wait().map_err(|e| e.to_string())?.len();
        }
        Ok(())
    }

    /// Submits, in order, the encoded batches that are ready; with `all`,
    /// waits for every batch sent so far.
    fn submit_ready(&mut self, all: bool) -> Result<(), String> {
        loop {
            while let Ok((order, batch)) = self.encoded.try_recv() {
                self.waiting.insert(order, batch);
            }
            while let Some(batch) = self.waiting.remove(&self.submitted) {
                while self.tickets.len() >= WINDOW {
                    self.settle_one()?;
                }
                let ticket = self
                    .engine
                    .submit_encoded(batch?)
                    .map_err(|e| e.to_string())?;
                self.tickets.push_back(ticket);
                self.submitted += 1;
            }
            if !all || self.submitted == self.sent {
                return Ok(());
            }
            let (order, batch) = self
                .encoded
                .recv()
                .map_err(|_| "the encoder threads stopped".to_owned())?;
            self.waiting.insert(order, batch);
        }
    }
}

impl Sink for EngineSink {
    fn append(&mut self, records: Vec<LogRecord>) -> Result<(), String> {
        let to_encode = self.to_encode.clone().ok_or("the sink is closed")?;
        // A full queue means the encoders are behind: submit what they
        // finished so the queue drains.
        let mut job = (self.sent, records);
        loop {
            match to_encode.try_send(job) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    job = back;
                    if let Ok((order, batch)) = self.encoded.recv_timeout(Duration::from_millis(5))
                    {
                        self.waiting.insert(order, batch);
                    }
                    self.submit_ready(false)?;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                    return Err("the encoder threads stopped".into());
                }
            }
        }
        self.sent += 1;
        self.submit_ready(false)
    }

    fn checkpoint(&mut self) -> Result<u64, String> {
        self.submit_ready(true)?;
        while !self.tickets.is_empty() {
            self.settle_one()?;
        }
        self.engine.sync().map_err(|e| e.to_string())?;
        Ok(self.appended)
    }
}

/// What to import and how.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// `auto`, `jsonl`, `syslog`, `logfmt`, `regex:PATTERN` or a layout.
    pub format: String,
    pub shape: Shape,
    pub lines: lines::Options,
    /// Stop at the first rejected line.
    pub strict: bool,
    /// Rejected lines are written here, as they were.
    pub rejects: Option<PathBuf>,
    pub batch: usize,
    /// Records between checkpoints.
    pub checkpoint: u64,
    pub threads: usize,
    /// Import time (ns): the timestamp of lines before any has one, and
    /// the year of year-less timestamps.
    pub now: i64,
}

/// A rejected line: file, line number, reason.
pub type Rejection = (String, u64, String);

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub records: u64,
    pub lines: u64,
    pub rejected: u64,
    /// The first few rejections.
    pub first_rejections: Vec<Rejection>,
    /// Records that took the previous record's timestamp.
    pub defaulted_ts: u64,
    /// Lines joined to the record before them.
    pub continuations: u64,
    /// The format of each input, as given or detected.
    pub format: String,
    pub elapsed: Duration,
}

/// Progress an import reports as it goes.
pub trait Progress {
    fn bytes(&self, done: u64);
    fn records(&self, total: u64);
    /// `durable` records are durable: those of the first `lines` input
    /// lines (counted across all inputs).
    fn checkpoint(&self, durable: u64, lines: u64);
}

/// No progress shown.
#[derive(Debug)]
pub struct Quiet;

impl Progress for Quiet {
    fn bytes(&self, _: u64) {}
    fn records(&self, _: u64) {}
    fn checkpoint(&self, _: u64, _: u64) {}
}

/// Counts the (compressed) bytes read from a file, for progress.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens `path` (`-` is standard input), decompressing `.gz` and `.zst`.
pub fn open_input(path: &Path, count: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>, String> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(File::open(path).map_err(|e| format!("{}: {e}", path.display()))?)
    };
    let counted = Counting { inner: raw, count };
    let name = path.to_string_lossy();
    let reader: Box<dyn Read + Send> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(counted))
    } else if name.ends_with(".zst") {
        Box::new(zstd::Decoder::new(counted).map_err(|e| format!("{name}: {e}"))?)
    } else {
        Box::new(counted)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, reader)))
}

/// Total bytes of the inputs, when all are files.
pub fn total_bytes(paths: &[PathBuf]) -> Option<u64> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| m.len()))
        .sum()
}

/// Lines of one input, with a head already read for format detection.
struct Source {
    name: String,
    reader: Box<dyn BufRead + Send>,
    head: VecDeque<String>,
}

impl Source {
    /// Reads up to `CHUNK_LINES` lines, or about `CHUNK_BYTES`, into one
    /// buffer; `None` at the end.
    fn next_chunk(&mut self) -> Result<Option<Lines>, String> {
        let mut bytes = Vec::with_capacity(CHUNK_BYTES);
        let mut ends = Vec::with_capacity(CHUNK_LINES);
        while ends.len() < CHUNK_LINES && bytes.len() < CHUNK_BYTES {
            match self.head.pop_front() {
                Some(line) => bytes.extend_from_slice(line.as_bytes()),
                None => {
                    let start = bytes.len();
                    let read = self
                        .reader
                        .read_until(b'\n', &mut bytes)
                        .map_err(|e| format!("{}: {e}", self.name))?;
                    if read == 0 {
                        break;
                    }
                    if bytes.len() > start && bytes.last() == Some(&b'\n') {
                        bytes.pop();
                    }
                }
            }
            ends.push(bytes.len());
        }
        if ends.is_empty() {
            return Ok(None);
        }
        Ok(Some(Lines::new(bytes, ends)))
    }

    fn read_line(&mut self) -> Result<Option<String>, String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => Ok(None),
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                Ok(Some(lossy(buf)))
            }
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Lines in one buffer (no allocation per line); a byte sequence that is
/// not UTF-8 is replaced, line by line, as `String::from_utf8_lossy` does.
struct Lines {
    text: String,
    /// Where each line ends in `text`.
    ends: Vec<usize>,
}

impl Lines {
    fn new(bytes: Vec<u8>, ends: Vec<usize>) -> Lines {
        match String::from_utf8(bytes) {
            Ok(text) => Lines { text, ends },
            Err(e) => {
                let bytes = e.into_bytes();
                let mut text = String::with_capacity(bytes.len());
                let mut fixed = Vec::with_capacity(ends.len());
                let mut start = 0;
                for end in ends {
                    let line = bytes.get(start..end).unwrap_or_default();
                    text.push_str(&String::from_utf8_lossy(line));
                    fixed.push(text.len());
                    start = end;
                }
                Lines { text, ends: fixed }
            }
        }
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(start, end)| self.text.get(start..end).unwrap_or_default())
    }
}

/// Lines parsed together by one worker.
struct Chunk {
    order: u64,
    file: usize,
    first_line: u64,
    lines: Lines,
}

/// A chunk is cut at this many lines or bytes, whichever comes first.
const CHUNK_BYTES: usize = 1 << 20;
const CHUNK_LINES: usize = 4096;
const DETECT_LINES: usize = 200;

/// Imports `paths` into `sink`. Lines are parsed on `threads` threads and
/// settled in order; a checkpoint makes the records durable every
/// `options.checkpoint` records and at the end.
pub fn import(
    paths: &[PathBuf],
    options: &ImportOptions,
    sink: &mut dyn Sink,
    progress: &dyn Progress,
) -> Result<Report, String> {
    let started = Instant::now();
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut sources = Vec::new();
    for path in paths {
        let reader = open_input(path, Arc::clone(&bytes_read))?;
        sources.push(Source {
            name: path.display().to_string(),
            reader,
            head: VecDeque::new(),
        });
    }
    // Each input gets its own format (and its own carried timestamp).
    let mut parsers = Vec::new();
    for source in &mut sources {
        let format = resolve_format(options, source)?;
        parsers.push(LineParser::new(format, options.lines.clone(), options.now));
    }
    let names: Vec<String> = sources.iter().map(|s| s.name.clone()).collect();
    let formats: Vec<String> = parsers.iter().map(|p| p.format().name()).collect();

    let threads = options.threads.max(1);
    let (chunk_tx, chunk_rx) = bounded::<Chunk>(threads * 2);
    let (parsed_tx, parsed_rx) = bounded::<(Chunk, Vec<Raw>)>(threads * 2);
    let reader = std::thread::spawn(move || -> Result<(), String> {
        let mut order = 0;
        for (file, mut source) in sources.into_iter().enumerate() {
            let mut line_no = 1;
            while let Some(lines) = source.next_chunk()? {
                let n = lines.len() as u64;
                let chunk = Chunk {
                    order,
                    file,
                    first_line: line_no,
                    lines,
                };
                if chunk_tx.send(chunk).is_err() {
                    return Ok(()); // the importer stopped (strict mode, an error)
                }
                order += 1;
                line_no += n;
            }
        }
        Ok(())
    });
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (rx, tx, parsers) = (chunk_rx.clone(), parsed_tx.clone(), parsers.clone());
            std::thread::spawn(move || {
                for chunk in rx {
                    let Some(parser) = parsers.get(chunk.file) else {
                        return;
                    };
                    let raws = chunk.lines.iter().map(|l| parser.parse_raw(l)).collect();
                    if tx.send((chunk, raws)).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop((chunk_rx, parsed_tx));

    let mut settler = Settler {
        parsers,
        options,
        sink,
        progress,
        names: &names,
        report: Report {
            format: formats.join(", "),
            ..Report::default()
        },
        batch: Vec::with_capacity(options.batch),
        pending: None,
        since_checkpoint: 0,
        rejects: match &options.rejects {
            Some(path) => Some(std::io::BufWriter::new(
                File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
            )),
            None => None,
        },
        complete: 0,
    };
    let mut waiting: BTreeMap<u64, (Chunk, Vec<Raw>)> = BTreeMap::new();
    let mut next = 0;
    let mut outcome = Ok(());
    for (chunk, raws) in &parsed_rx {
        waiting.insert(chunk.order, (chunk, raws));
        while let Some((chunk, raws)) = waiting.remove(&next) {
            next += 1;
            progress.bytes(bytes_read.load(Ordering::Relaxed));
            if outcome.is_ok() {
                outcome = settler.chunk(chunk, raws);
            }
        }
        if outcome.is_err() {
            break;
        }
    }
    drop(parsed_rx);
    for worker in workers {
        let _ = worker.join();
    }
    let read = reader
        .join()
        .map_err(|_| "the reader thread panicked".to_owned())?;
    outcome?;
    read?;
    settler.finish()?;
    let mut report = settler.report;
    report.defaulted_ts = settler.parsers.iter().map(|p| p.defaulted_ts).sum();
    report.elapsed = started.elapsed();
    progress.bytes(bytes_read.load(Ordering::Relaxed));
    Ok(report)
}

fn resolve_format(options: &ImportOptions, first: &mut Source) -> Result<Format, String> {
    let format = Format::parse(&options.format, options.shape.clone())?;
    if !matches!(format, Format::Auto) {
        return Ok(format);
    }
    while first.head.len() < DETECT_LINES {
        match first.read_line()? {
            Some(line) => first.head.push_back(line),
            None => break,
        }
    }
    let sample: Vec<&str> = first.head.iter().map(String::as_str).collect();
    lines::detect(&sample, &options.shape).ok_or_else(|| {
        format!(
            "{}: cannot tell the format from its first lines; give --format (jsonl, syslog, logfmt, regex:PATTERN, or one of {})",
            first.name,
            lines::layout_names().collect::<Vec<_>>().join(", ")
        )
    })
}

/// The in-order stage: state of the stream, batches, rejects, checkpoints.
struct Settler<'a> {
    /// One per input.
    parsers: Vec<LineParser>,
    options: &'a ImportOptions,
    sink: &'a mut dyn Sink,
    progress: &'a dyn Progress,
    names: &'a [String],
    report: Report,
    batch: Vec<LogRecord>,
    /// The newest record, held back while continuation lines may follow.
    pending: Option<LogRecord>,
    since_checkpoint: u64,
    rejects: Option<std::io::BufWriter<File>>,
    /// Input lines (counted across files) whose records all went to the
    /// sink.
    complete: u64,
}

impl Settler<'_> {
    fn chunk(&mut self, chunk: Chunk, raws: Vec<Raw>) -> Result<(), String> {
        for (i, (line, raw)) in chunk.lines.iter().zip(raws).enumerate() {
            let line_no = chunk.first_line + i as u64;
            self.report.lines += 1;
            let Some(parser) = self.parsers.get_mut(chunk.file) else {
                return Err(format!("no parser for input {}", chunk.file));
            };
            match parser.settle(raw, line) {
                Line::Record(record) => {
                    if let Some(done) = self.pending.replace(record) {
                        // Every line before this one belongs to a finished record.
                        self.complete = self.report.lines - 1;
                        self.push(done)?;
                    }
                }
                Line::Continuation(text) => match &mut self.pending {
                    Some(record) => {
                        record.message.push('\n');
                        record.message.push_str(&text);
                        self.report.continuations += 1;
                    }
                    None => self.reject(
                        chunk.file,
                        line_no,
                        line,
                        "a continuation line before any record".into(),
                    )?,
                },
                Line::Rejected(reason) => self.reject(chunk.file, line_no, line, reason)?,
                Line::Empty => {}
            }
        }
        Ok(())
    }

    fn reject(
        &mut self,
        file: usize,
        line_no: u64,
        line: &str,
        reason: String,
    ) -> Result<(), String> {
        self.report.rejected += 1;
        let name = self.names.get(file).cloned().unwrap_or_default();
        if let Some(out) = &mut self.rejects {
            writeln!(out, "{line}").map_err(|e| format!("rejects file: {e}"))?;
        }
        if self.options.strict {
            return Err(format!("{name}:{line_no}: {reason} (--strict)"));
        }
        if self.report.first_rejections.len() < 10 {
            self.report.first_rejections.push((name, line_no, reason));
        }
        Ok(())
    }

    fn push(&mut self, record: LogRecord) -> Result<(), String> {
        self.batch.push(record);
        if self.batch.len() >= self.options.batch.max(1) {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(self.options.batch));
        let n = batch.len() as u64;
        self.sink.append(batch)?;
        self.report.records += n;
        self.since_checkpoint += n;
        self.progress.records(self.report.records);
        if self.since_checkpoint >= self.options.checkpoint {
            self.checkpoint()?;
        }
        Ok(())
    }

    fn checkpoint(&mut self) -> Result<(), String> {
        let durable = self.sink.checkpoint()?;
        self.since_checkpoint = 0;
        self.progress.checkpoint(durable, self.complete);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), String> {
        if let Some(record) = self.pending.take() {
            self.push(record)?;
        }
        self.complete = self.report.lines;
        self.flush()?;
        if let Some(out) = &mut self.rejects {
            out.flush().map_err(|e| format!("rejects file: {e}"))?;
        }
        self.checkpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Just;

    fn chunks(input: &[u8], head: &[&str]) -> Vec<Vec<String>> {
        let mut source = Source {
            name: "test".into(),
            reader: Box::new(std::io::Cursor::new(input.to_vec())),
            head: head.iter().map(|l| (*l).to_owned()).collect(),
        };
        let mut out = Vec::new();
        while let Some(lines) = source.next_chunk().expect("read") {
            assert_eq!(lines.len(), lines.iter().count());
            out.push(lines.iter().map(str::to_owned).collect());
        }
        out
    }

    #[test]
    fn chunks_keep_every_line_and_its_boundaries() {
        let got = chunks(b"a\n\nb\r\nlast", &["head"]);
        assert_eq!(got, vec![vec!["head", "a", "", "b\r", "last"]]);
        assert!(chunks(b"", &[]).is_empty());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_in_their_own_line() {
        let got = chunks(b"ok\nbad \xff\xfe here\nfine\n", &[]);
        assert_eq!(got, vec![vec!["ok", "bad \u{fffd}\u{fffd} here", "fine"]]);
    }

    proptest::proptest! {
        /// Whatever the bytes, the chunks hold the input's lines in order,
        /// each converted on its own as `String::from_utf8_lossy` does.
        #[test]
        fn chunks_are_the_lines_of_any_input(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b'\n'), Just(b'\r'), Just(0xffu8), Just(0xc3u8), Just(0xa9u8), 0u8..128
                ],
                0..3000,
            )
        ) {
            let mut expected: Vec<String> = input
                .split(|b| *b == b'\n')
                .map(|line| String::from_utf8_lossy(line).into_owned())
                .collect();
            if input.last().is_none_or(|b| *b == b'\n') {
                expected.pop(); // after the last newline, no line
            }
            let got: Vec<String> = chunks(&input, &[]).into_iter().flatten().collect();
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_chunk_is_cut_at_its_line_count() {
        let input: Vec<u8> = (0..CHUNK_LINES + 3)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let got = chunks(&input, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), CHUNK_LINES);
        assert_eq!(
            got[1],
            vec![
                CHUNK_LINES.to_string(),
                (CHUNK_LINES + 1).to_string(),
                (CHUNK_LINES + 2).to_string()
            ]
        );
    }
}
