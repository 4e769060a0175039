//! Sealed records in columns: the value a segment sealed in manifest
//! format 4 stores under the seq of its first record.
//!
//! A chunk holds a run of consecutive records column by column, so that
//! the block compressor (RocksDB's zstd) sees like next to like: time
//! deltas, then level, tenant, service and host as ids into the chunk's
//! dictionary of strings, attribute counts, keys (ids) and value lengths,
//! message lengths, where each dictionary string ends, and then the
//! dictionary's, the values' and the messages' bytes. Each integer column has a fixed width (1, 2, 4 or 8
//! bytes, the least its largest value needs), so a record in the middle is
//! reached by summing lengths, not by decoding everything before it.
//!
//! Records 64, 128, ... (every [`MARK_EVERY`]th, counted from 0, the
//! first excepted) have a mark: the record's time and its first
//! attribute's, value's and message's offsets, four more columns, so a
//! point read sums the lengths of at most 63 records.
//!
//! ```text
//! u8 version (2) | u32 count | i64 first ts
//! per integer column (COLUMNS, in order): u8 width | u32 values
//! per byte area (dictionary, values, messages): u32 length
//! the integer columns' values, then the byte areas
//! ```
//!
//! Version 1 (still read) is the same without the four mark columns, with
//! each dictionary string's length where version 2 has its end.
//!
//! All integers are little-endian. A time delta is zigzag-encoded and
//! added with wrapping arithmetic; a level is 0-5 for the named levels and
//! 6 + a dictionary id for `Level::Other`. Every length and id is checked
//! on read: a damaged chunk reads as an error, never a panic.

use std::collections::HashMap;

use crate::record::{ArchivedLevel, Level, LogRecord, RecordRef, access_record};
use crate::{CodecError, Result};

const VERSION: u8 = 2;

/// The chunk format before marks: its columns are the first
/// [`COLUMNS_V1`].
const VERSION_V1: u8 = 1;

/// The integer columns, in their order in a chunk.
const COLUMNS: usize = 14;
const COLUMNS_V1: usize = 10;
const TS: usize = 0;
const LEVEL: usize = 1;
const TENANT: usize = 2;
const SERVICE: usize = 3;
const HOST: usize = 4;
const ATTRS: usize = 5;
const ATTR_KEY: usize = 6;
const VALUE_LEN: usize = 7;
const MESSAGE_LEN: usize = 8;
/// Per string of the dictionary, in id order: where its bytes end in the
/// dictionary's area (version 1: its length).
const STRING_END: usize = 9;
/// Per mark: zigzag of the marked record's time minus the first record's.
const MARK_TS: usize = 10;
/// Per mark: the marked record's first attribute.
const MARK_ATTR: usize = 11;
/// Per mark: the marked record's first value byte.
const MARK_VALUE: usize = 12;
/// Per mark: the marked record's first message byte.
const MARK_MESSAGE: usize = 13;

/// Records `k * MARK_EVERY` (k >= 1) are marked.
const MARK_EVERY: usize = 64;

/// Level codes below this are the named levels; `LEVEL_OTHER + id` is
/// `Level::Other` of dictionary string `id`.
const LEVEL_OTHER: u64 = 6;

/// The shortest header, version 1's.
const HEADER_LEN: usize = 1 + 4 + 8 + COLUMNS_V1 * 5 + 3 * 4;

fn invalid(what: impl std::fmt::Display) -> CodecError {
    CodecError::Invalid(format!("sealed chunk: {what}"))
}

/// Builds chunks from records pushed in seq order; [`ChunkBuilder::finish`]
/// writes one out and starts the next.
#[derive(Debug, Default)]
pub struct ChunkBuilder {
    count: usize,
    first_ts: i64,
    prev_ts: i64,
    columns: [Vec<u64>; COLUMNS],
    /// Each column's largest value so far.
    largest: [u64; COLUMNS],
    ids: HashMap<String, u64>,
    strings: Vec<u8>,
    values: Vec<u8>,
    messages: Vec<u8>,
}

impl ChunkBuilder {
    /// Records pushed since the last [`ChunkBuilder::finish`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What the chunk will take before compression, its header aside.
    pub fn raw_bytes(&self) -> usize {
        let numbers: usize = (self.columns.iter().zip(self.largest))
            .map(|(column, largest)| column.len() * width(Some(&largest)))
            .sum();
        numbers + self.strings.len() + self.values.len() + self.messages.len()
    }

    fn put(&mut self, column: usize, value: u64) {
        if let (Some(values), Some(largest)) =
            (self.columns.get_mut(column), self.largest.get_mut(column))
        {
            values.push(value);
            *largest = (*largest).max(value);
        }
    }

    /// Adds the next record.
    pub fn push(&mut self, record: RecordRef<'_>) {
        let ts = record.ts.to_native();
        if self.count == 0 {
            self.first_ts = ts;
            self.prev_ts = ts;
        }
        if self.count > 0 && self.count.is_multiple_of(MARK_EVERY) {
            self.put(MARK_TS, zigzag(ts.wrapping_sub(self.first_ts)));
            self.put(MARK_ATTR, self.columns[ATTR_KEY].len() as u64);
            self.put(MARK_VALUE, self.values.len() as u64);
            self.put(MARK_MESSAGE, self.messages.len() as u64);
        }
        self.put(TS, zigzag(ts.wrapping_sub(self.prev_ts)));
        self.prev_ts = ts;
        let level = match &record.level {
            ArchivedLevel::Trace => 0,
            ArchivedLevel::Debug => 1,
            ArchivedLevel::Info => 2,
            ArchivedLevel::Warn => 3,
            ArchivedLevel::Error => 4,
            ArchivedLevel::Fatal => 5,
            ArchivedLevel::Other(text) => LEVEL_OTHER + self.id(text),
        };
        self.put(LEVEL, level);
        let tenant = self.id(record.tenant);
        self.put(TENANT, tenant);
        let service = self.id(&record.service);
        self.put(SERVICE, service);
        let host = self.id(&record.host);
        self.put(HOST, host);
        self.put(ATTRS, record.attrs.len() as u64);
        for pair in record.attrs.iter() {
            let key = self.id(&pair.0);
            self.put(ATTR_KEY, key);
            self.put(VALUE_LEN, pair.1.len() as u64);
            self.values.extend_from_slice(pair.1.as_bytes());
        }
        self.put(MESSAGE_LEN, record.message.len() as u64);
        self.messages.extend_from_slice(record.message.as_bytes());
        self.count += 1;
    }

    /// The dictionary id of `text`, added if new.
    fn id(&mut self, text: &str) -> u64 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.ids.len() as u64;
        self.ids.insert(text.to_owned(), id);
        self.strings.extend_from_slice(text.as_bytes());
        self.put(STRING_END, self.strings.len() as u64);
        id
    }

    /// Appends the chunk of the records pushed to `out` and empties the
    /// builder. A chunk over 4 GiB of text cannot be written.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let count = u32::try_from(self.count).map_err(|_| invalid("too many records"))?;
        out.push(VERSION);
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.first_ts.to_le_bytes());
        let widths = self.columns.each_ref().map(|c| width(c.iter().max()));
        for (column, width) in self.columns.iter().zip(widths) {
            let len = u32::try_from(column.len()).map_err(|_| invalid("column too long"))?;
            out.push(width as u8);
            out.extend_from_slice(&len.to_le_bytes());
        }
        for area in [&self.strings, &self.values, &self.messages] {
            let len = u32::try_from(area.len()).map_err(|_| invalid("text over 4 GiB"))?;
            out.extend_from_slice(&len.to_le_bytes());
        }
        for (column, width) in self.columns.iter().zip(widths) {
            for value in column {
                out.extend(value.to_le_bytes().into_iter().take(width));
            }
        }
        for area in [&self.strings, &self.values, &self.messages] {
            out.extend_from_slice(area);
        }
        *self = ChunkBuilder {
            columns: std::mem::take(&mut self.columns).map(|mut c| {
                c.clear();
                c
            }),
            ..ChunkBuilder::default()
        };
        Ok(())
    }
}

/// Bytes a column needs for its largest value.
fn width(max: Option<&u64>) -> usize {
    match max.copied().unwrap_or(0) {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    }
}

/// One integer column, read in place.
#[derive(Debug, Clone, Copy)]
struct Column<'a> {
    width: usize,
    bytes: &'a [u8],
}

impl Column<'_> {
    fn len(&self) -> usize {
        self.bytes.len() / self.width
    }

    fn get(&self, i: usize) -> Result<u64> {
        let bytes = i
            .checked_mul(self.width)
            .and_then(|at| self.bytes.get(at..at.checked_add(self.width)?))
            .ok_or_else(|| invalid(format!("value {i} past its column")))?;
        Ok(le(bytes))
    }

    /// The sum of values `[from, to)`, which must exist.
    fn sum(&self, from: usize, to: usize) -> Result<u64> {
        self.fold(from, to, 0, u64::wrapping_add)
    }

    /// The sum of the zigzag-encoded deltas `[from, to)`.
    fn sum_deltas(&self, from: usize, to: usize) -> Result<i64> {
        self.fold(from, to, 0, |sum, value| sum.wrapping_add(unzigzag(value)))
    }

    /// Folds values `[from, to)`, which must exist, with `step`: one loop
    /// per width, so each compiles to plain loads (a seek sums thousands).
    fn fold<T>(&self, from: usize, to: usize, init: T, step: impl Fn(T, u64) -> T) -> Result<T> {
        let bytes = from
            .checked_mul(self.width)
            .zip(to.checked_mul(self.width))
            .and_then(|(from, to)| self.bytes.get(from..to))
            .ok_or_else(|| invalid(format!("values {from}..{to} past their column")))?;
        Ok(match self.width {
            1 => bytes.iter().fold(init, |acc, &b| step(acc, u64::from(b))),
            2 => bytes.chunks_exact(2).fold(init, |acc, b| {
                step(
                    acc,
                    u64::from(u16::from_le_bytes(b.try_into().unwrap_or_default())),
                )
            }),
            4 => bytes.chunks_exact(4).fold(init, |acc, b| {
                step(
                    acc,
                    u64::from(u32::from_le_bytes(b.try_into().unwrap_or_default())),
                )
            }),
            _ => bytes.chunks_exact(8).fold(init, |acc, b| step(acc, le(b))),
        })
    }
}

/// A chunk read in place; its header, and that its dictionary is UTF-8,
/// are checked when it is parsed; each record's lengths and ids, and each
/// string's bounds, when it is read. A damaged mark that stays in bounds
/// reads wrong records, as a damaged length does: RocksDB's block
/// checksums and the segment's records checksum catch damage.
#[derive(Debug)]
pub struct Chunk<'a> {
    count: usize,
    first_ts: i64,
    columns: [Column<'a>; COLUMNS],
    strings: Dictionary<'a>,
    values: &'a [u8],
    messages: &'a [u8],
}

/// Where the next record of a chunk starts: its index, its time and its
/// first attribute's, attribute value's and message's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub index: usize,
    ts: i64,
    attr: usize,
    value: usize,
    message: usize,
}

/// Reads `N` bytes at `*at` and moves past them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let taken = bytes
        .get(*at..*at + n)
        .ok_or_else(|| invalid("shorter than its header says"))?;
    *at += n;
    Ok(taken)
}

fn byte(bytes: &[u8], at: &mut usize) -> Result<u8> {
    Ok(take(bytes, at, 1)?.first().copied().unwrap_or_default())
}

/// A little-endian number of up to 8 bytes.
fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |value, &b| value << 8 | u64::from(b))
}

fn le_u32(bytes: &[u8]) -> usize {
    u32::from_le_bytes(bytes.try_into().unwrap_or_default()) as usize
}

impl<'a> Chunk<'a> {
    /// Parses a chunk's header and dictionary.
    pub fn parse(bytes: &'a [u8]) -> Result<Chunk<'a>> {
        if bytes.len() < HEADER_LEN {
            return Err(invalid(format!("{} bytes", bytes.len())));
        }
        let mut at = 0;
        let columns_in = columns_of(byte(bytes, &mut at)?)?;
        let count = le_u32(take(bytes, &mut at, 4)?);
        let first_ts = i64::from_le_bytes(take(bytes, &mut at, 8)?.try_into().unwrap_or_default());
        let mut shapes = [(1usize, 0usize); COLUMNS];
        for shape in shapes.iter_mut().take(columns_in) {
            let width = usize::from(byte(bytes, &mut at)?);
            if ![1, 2, 4, 8].contains(&width) {
                return Err(invalid(format!("a column of width {width}")));
            }
            *shape = (width, le_u32(take(bytes, &mut at, 4)?));
        }
        let mut areas = [0usize; 3];
        for area in &mut areas {
            *area = le_u32(take(bytes, &mut at, 4)?);
        }
        let mut columns = [Column {
            width: 1,
            bytes: &[],
        }; COLUMNS];
        for (column, (width, len)) in columns.iter_mut().zip(shapes) {
            *column = Column {
                width,
                bytes: take(bytes, &mut at, width * len)?,
            };
        }
        let strings = take(bytes, &mut at, areas[0])?;
        let values = take(bytes, &mut at, areas[1])?;
        let messages = take(bytes, &mut at, areas[2])?;
        if at != bytes.len() {
            return Err(invalid(format!("{} bytes after its end", bytes.len() - at)));
        }
        let per_record = [TS, LEVEL, TENANT, SERVICE, HOST, ATTRS, MESSAGE_LEN];
        let lens = columns.map(|c| c.len());
        if count == 0 || per_record.iter().any(|&c| lens.get(c) != Some(&count)) {
            return Err(invalid(format!("columns that disagree on {count} records")));
        }
        if columns[ATTR_KEY].len() != columns[VALUE_LEN].len() {
            return Err(invalid("attribute keys and values disagree"));
        }
        let marks = match columns_in {
            COLUMNS => (count - 1) / MARK_EVERY,
            _ => 0,
        };
        if [MARK_TS, MARK_ATTR, MARK_VALUE, MARK_MESSAGE]
            .iter()
            .any(|&c| lens.get(c) != Some(&marks))
        {
            return Err(invalid(format!("marks that disagree on {count} records")));
        }
        Ok(Chunk {
            count,
            first_ts,
            strings: Dictionary::parse(columns_in, columns[STRING_END], strings)?,
            columns,
            values,
            messages,
        })
    }

    /// The number of records a chunk's header says it holds, read from the
    /// header alone ([`Chunk::parse`] checks the rest).
    pub fn records_in(bytes: &[u8]) -> Result<usize> {
        let mut at = 0;
        columns_of(byte(bytes, &mut at)?)?;
        Ok(le_u32(take(bytes, &mut at, 4)?))
    }

    /// Records in the chunk (at least one).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// A cursor at record `index`, moved there from `from` (a cursor of
    /// this chunk) when `from` is not past it, else from the start.
    pub fn seek(&self, from: Cursor, index: usize) -> Result<Cursor> {
        if index >= self.count {
            return Err(invalid(format!("record {index} of {}", self.count)));
        }
        let mut at = if from.index <= index {
            from
        } else {
            self.start()
        };
        if let Some(mark) = self.mark_at_or_before(index)?
            && mark.index > at.index
        {
            at = mark;
        }
        if index > at.index {
            let deltas = self.columns[TS].sum_deltas(at.index + 1, index + 1)?;
            at.ts = at.ts.wrapping_add(deltas);
        }
        let attrs = usize::try_from(self.columns[ATTRS].sum(at.index, index)?)
            .ok()
            .and_then(|attrs| at.attr.checked_add(attrs))
            .ok_or_else(|| invalid("attribute counts overflow"))?;
        let value = self.columns[VALUE_LEN].sum(at.attr, attrs)?;
        let message = self.columns[MESSAGE_LEN].sum(at.index, index)?;
        at.attr = attrs;
        at.value = at
            .value
            .checked_add(usize::try_from(value).map_err(|_| invalid("value lengths overflow"))?)
            .ok_or_else(|| invalid("value lengths overflow"))?;
        at.message = at
            .message
            .checked_add(usize::try_from(message).map_err(|_| invalid("message lengths overflow"))?)
            .ok_or_else(|| invalid("message lengths overflow"))?;
        at.index = index;
        Ok(at)
    }

    /// A cursor at the last mark at or before record `index`, if any.
    fn mark_at_or_before(&self, index: usize) -> Result<Option<Cursor>> {
        let Some(mark) = (index / MARK_EVERY).checked_sub(1) else {
            return Ok(None);
        };
        if mark >= self.columns[MARK_TS].len() {
            return Ok(None); // a chunk of version 1
        }
        let offset = |column: Column<'_>| {
            usize::try_from(column.get(mark)?)
                .map_err(|_| invalid(format!("mark {mark} overflows")))
        };
        Ok(Some(Cursor {
            index: (mark + 1) * MARK_EVERY,
            ts: self
                .first_ts
                .wrapping_add(unzigzag(self.columns[MARK_TS].get(mark)?)),
            attr: offset(self.columns[MARK_ATTR])?,
            value: offset(self.columns[MARK_VALUE])?,
            message: offset(self.columns[MARK_MESSAGE])?,
        }))
    }

    /// A cursor at the first record.
    pub fn start(&self) -> Cursor {
        Cursor {
            index: 0,
            ts: self
                .first_ts
                .wrapping_add(unzigzag(self.columns[TS].get(0).unwrap_or(0))),
            attr: 0,
            value: 0,
            message: 0,
        }
    }

    /// Reads the record at `at` into `out` (its tenant included), reusing
    /// `out`'s allocations, and moves `at` to the next record.
    pub fn read(&self, at: &mut Cursor, out: &mut LogRecord) -> Result<()> {
        let i = at.index;
        if i >= self.count {
            return Err(invalid(format!("record {i} of {}", self.count)));
        }
        out.ts = at.ts;
        out.level = match self.columns[LEVEL].get(i)? {
            0 => Level::Trace,
            1 => Level::Debug,
            2 => Level::Info,
            3 => Level::Warn,
            4 => Level::Error,
            5 => Level::Fatal,
            code => Level::Other(self.string(code - LEVEL_OTHER)?.to_owned()),
        };
        set(&mut out.tenant, self.string(self.columns[TENANT].get(i)?)?);
        set(
            &mut out.service,
            self.string(self.columns[SERVICE].get(i)?)?,
        );
        set(&mut out.host, self.string(self.columns[HOST].get(i)?)?);
        // At most the attributes left: a damaged count allocates nothing.
        let attrs = usize::try_from(self.columns[ATTRS].get(i)?)
            .ok()
            .filter(|&n| n <= self.columns[ATTR_KEY].len().saturating_sub(at.attr))
            .ok_or_else(|| invalid("more attributes than the chunk holds"))?;
        out.attrs.resize_with(attrs, Default::default);
        for (n, (key, value)) in out.attrs.iter_mut().enumerate() {
            set(key, self.string(self.columns[ATTR_KEY].get(at.attr + n)?)?);
            let len = self.columns[VALUE_LEN].get(at.attr + n)?;
            set(value, text(self.values, &mut at.value, len)?);
        }
        at.attr += attrs;
        let len = self.columns[MESSAGE_LEN].get(i)?;
        set(&mut out.message, text(self.messages, &mut at.message, len)?);
        at.index += 1;
        if at.index < self.count {
            at.ts = at
                .ts
                .wrapping_add(unzigzag(self.columns[TS].get(at.index)?));
        }
        Ok(())
    }

    fn string(&self, id: u64) -> Result<&'a str> {
        self.strings.get(id)
    }
}

/// How many integer columns a chunk of `version` has.
fn columns_of(version: u8) -> Result<usize> {
    match version {
        VERSION => Ok(COLUMNS),
        VERSION_V1 => Ok(COLUMNS_V1),
        _ => Err(invalid(format!("unknown version {version}"))),
    }
}

/// A chunk's dictionary: its strings' bytes, checked to be UTF-8 once
/// when the chunk is parsed, and where each string ends.
#[derive(Debug)]
struct Dictionary<'a> {
    area: &'a str,
    ends: Ends<'a>,
}

#[derive(Debug)]
enum Ends<'a> {
    /// The chunk's own column of ends (version 2): parsing a chunk for a
    /// point read does nothing per string.
    Stored(Column<'a>),
    /// Summed from a column of lengths (version 1).
    Summed(Vec<usize>),
}

impl<'a> Dictionary<'a> {
    fn parse(columns_in: usize, column: Column<'a>, bytes: &'a [u8]) -> Result<Dictionary<'a>> {
        let area = std::str::from_utf8(bytes).map_err(invalid)?;
        let ends = match columns_in {
            COLUMNS => Ends::Stored(column),
            _ => {
                let mut ends = Vec::with_capacity(column.len());
                let mut end = 0usize;
                for i in 0..column.len() {
                    end = usize::try_from(column.get(i)?)
                        .ok()
                        .and_then(|len| end.checked_add(len))
                        .ok_or_else(|| invalid("a string length overflows"))?;
                    ends.push(end);
                }
                Ends::Summed(ends)
            }
        };
        Ok(Dictionary { area, ends })
    }

    /// Where string `id` ends.
    fn end(&self, id: usize) -> Result<usize> {
        let end = match &self.ends {
            Ends::Stored(column) => usize::try_from(column.get(id)?).ok(),
            Ends::Summed(ends) => ends.get(id).copied(),
        };
        end.ok_or_else(|| invalid(format!("string {id} not in the dictionary")))
    }

    /// String `id`, which must start and end on a character.
    fn get(&self, id: u64) -> Result<&'a str> {
        let id = usize::try_from(id).map_err(|_| invalid(format!("string {id}")))?;
        let start = match id.checked_sub(1) {
            Some(before) => self.end(before)?,
            None => 0,
        };
        let end = self.end(id)?;
        self.area
            .get(start..end)
            .ok_or_else(|| invalid(format!("string {id} past its area or inside a character")))
    }
}

/// The UTF-8 text of `len` bytes at `*at` in `area`; moves past it.
fn text<'a>(area: &'a [u8], at: &mut usize, len: u64) -> Result<&'a str> {
    let len = usize::try_from(len).map_err(|_| invalid("a length overflows"))?;
    let end = at
        .checked_add(len)
        .ok_or_else(|| invalid("a length overflows"))?;
    let bytes = area
        .get(*at..end)
        .ok_or_else(|| invalid("text past its area"))?;
    *at = end;
    std::str::from_utf8(bytes).map_err(invalid)
}

fn set(field: &mut String, value: &str) {
    field.clear();
    field.push_str(value);
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// Reads a chunk's records as [`RecordRef`]s, as a sealed value of one
/// record reads: each is copied into a reused record and archived again
/// into a reused buffer.
#[derive(Debug, Default)]
pub struct ChunkReader {
    record: LogRecord,
    bytes: Vec<u8>,
}

impl ChunkReader {
    /// The record at `at`, read; moves `at` to the next record.
    pub fn read<'s>(&'s mut self, chunk: &Chunk<'_>, at: &mut Cursor) -> Result<RecordRef<'s>> {
        chunk.read(at, &mut self.record)?;
        let bytes = std::mem::take(&mut self.bytes);
        self.bytes = crate::record::encode_record_into(&self.record, bytes)?;
        Ok(RecordRef {
            tenant: &self.record.tenant,
            record: access_record(&self.bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::encode_record;

    fn chunk_of(records: &[LogRecord]) -> Vec<u8> {
        let mut builder = ChunkBuilder::default();
        for record in records {
            let bytes = encode_record(record).unwrap();
            builder.push(RecordRef {
                tenant: &record.tenant,
                record: access_record(&bytes).unwrap(),
            });
        }
        let mut out = Vec::new();
        builder.finish(&mut out).unwrap();
        assert!(builder.is_empty());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<LogRecord>> {
        let chunk = Chunk::parse(bytes)?;
        let mut at = chunk.start();
        let mut reader = ChunkReader::default();
        (0..chunk.len())
            .map(|_| reader.read(&chunk, &mut at)?.to_owned_record())
            .collect()
    }

    fn level() -> impl Strategy<Value = Level> {
        prop_oneof![
            Just(Level::Trace),
            Just(Level::Info),
            Just(Level::Fatal),
            "[a-zé]{0,6}".prop_map(Level::Other),
        ]
    }

    fn record() -> impl Strategy<Value = LogRecord> {
        (
            any::<i64>(),
            level(),
            "[a-c]{0,3}",
            "[a-c]{0,2}",
            proptest::collection::vec(("[ké]{0,2}", ".{0,5}"), 0..4),
            ".{0,40}",
            prop_oneof![Just(String::new()), Just("acme".to_owned())],
        )
            .prop_map(
                |(ts, level, service, host, attrs, message, tenant)| LogRecord {
                    ts,
                    level,
                    service,
                    host,
                    attrs,
                    message,
                    tenant,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Whatever the records, a chunk reads them back exactly, in
        /// order and from any record on.
        #[test]
        fn records_read_back(records in proptest::collection::vec(record(), 1..300), from in any::<prop::sample::Index>()) {
            let bytes = chunk_of(&records);
            prop_assert_eq!(&read_all(&bytes).unwrap(), &records);
            prop_assert_eq!(Chunk::records_in(&bytes).unwrap(), records.len());
            let chunk = Chunk::parse(&bytes).unwrap();
            let start = from.index(records.len());
            let mut reader = ChunkReader::default();
            let mut at = chunk.seek(chunk.start(), start).unwrap();
            for expected in &records[start..] {
                prop_assert_eq!(&reader.read(&chunk, &mut at).unwrap().to_owned_record().unwrap(), expected);
            }
            // Reading up to a record lands where seeking it (by its mark
            // and the lengths after) does.
            let mut walked = chunk.start();
            for _ in 0..start {
                reader.read(&chunk, &mut walked).unwrap();
            }
            let sought = chunk.seek(chunk.start(), start).unwrap();
            prop_assert_eq!(walked, sought);
            // Seeking on from a cursor at, just past or after the last mark
            // before the record (as the engine does, record after record)
            // lands there too.
            let mark = start / MARK_EVERY * MARK_EVERY;
            for from in [mark, (mark + 1).min(start), start.saturating_sub(1), start] {
                let at = chunk.seek(chunk.start(), from).unwrap();
                prop_assert_eq!(chunk.seek(at, start).unwrap(), sought);
            }
            // Seeking on from an earlier cursor lands where seeking from
            // the start does.
            let half = chunk.seek(chunk.start(), start / 2).unwrap();
            prop_assert_eq!(chunk.seek(half, start).unwrap(), chunk.seek(chunk.start(), start).unwrap());
        }

        /// Damaged chunks read as errors, never as panics.
        #[test]
        fn damaged_chunks_never_panic(
            records in proptest::collection::vec(record(), 1..150),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = chunk_of(&records);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value;
            }
            let _ = read_all(&bytes);
            let _ = read_all(&bytes[..cut.index(bytes.len())]);
            if let Ok(chunk) = Chunk::parse(&bytes) {
                let _ = chunk.seek(chunk.start(), chunk.len() - 1);
                if let Ok(half) = chunk.seek(chunk.start(), chunk.len() / 2) {
                    let _ = chunk.seek(half, chunk.len() - 1);
                }
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = read_all(&bytes);
        }
    }

    /// The record at `i` of the golden chunk: times that go back now and
    /// then, every level, two tenants, attributes of 0-2 pairs.
    fn golden_record(i: u64) -> LogRecord {
        let back = if i % 7 == 3 { -5_000_000 } else { 1_234_567 };
        LogRecord {
            ts: 1_700_000_000_000_000_000 + i as i64 * back,
            level: match i % 7 {
                0 => Level::Trace,
                1 => Level::Debug,
                2 => Level::Info,
                3 => Level::Warn,
                4 => Level::Error,
                5 => Level::Fatal,
                _ => Level::Other("notice".to_owned()),
            },
            tenant: if i.is_multiple_of(5) {
                "acme".to_owned()
            } else {
                String::new()
            },
            service: format!("svc{}", i % 3),
            host: format!("host-{}", i % 11),
            attrs: (0..i % 3)
                .map(|n| (format!("k{n}"), format!("v{}", i * n)))
                .collect(),
            message: format!("message {i} {}", "é".repeat((i % 20) as usize)),
        }
    }

    /// A chunk of version 1 (no marks), written by this test with
    /// `LODE_WRITE_GOLDEN=1` before marks existed: `golden_record(0..150)`.
    const GOLDEN_V1: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/chunk-v1.bin");

    #[test]
    fn golden_chunk_v1_is_still_read() {
        let records: Vec<LogRecord> = (0..150).map(golden_record).collect();
        // Written only when missing: today's code writes version 2.
        if std::env::var_os("LODE_WRITE_GOLDEN").is_some()
            && !std::path::Path::new(GOLDEN_V1).exists()
        {
            std::fs::create_dir_all(std::path::Path::new(GOLDEN_V1).parent().unwrap()).unwrap();
            std::fs::write(GOLDEN_V1, chunk_of(&records)).unwrap();
        }
        let bytes = std::fs::read(GOLDEN_V1).unwrap();
        assert_eq!(bytes[0], 1, "a chunk of version 1");
        assert_eq!(read_all(&bytes).unwrap(), records);
        let chunk = Chunk::parse(&bytes).unwrap();
        let mut reader = ChunkReader::default();
        for i in [0, 63, 64, 65, 149, 100, 5] {
            let mut at = chunk.seek(chunk.start(), i).unwrap();
            let read = reader
                .read(&chunk, &mut at)
                .unwrap()
                .to_owned_record()
                .unwrap();
            assert_eq!(read, records[i]);
        }
    }

    #[test]
    fn widths_follow_the_largest_value() {
        let records: Vec<LogRecord> = (0..300)
            .map(|i| LogRecord {
                ts: 1_000_000_000 + i * 3,
                service: format!("s{i}"),
                message: "m".repeat(i as usize),
                ..LogRecord::default()
            })
            .collect();
        let bytes = chunk_of(&records);
        // Widths: ts 1 (deltas of 3 zigzag to 6), level 1, tenant 1,
        // service 2 (300 distinct), host 1, attrs 1, keys and value
        // lengths 1 (empty), message lengths 2, string ends 2 (1,090
        // bytes of strings); marks
        // (records 64, 128, 192, 256): times 2 (up to 1536), attributes 1
        // and values 1 (none), messages 2 (up to 32640).
        let widths: Vec<u8> = (0..COLUMNS).map(|c| bytes[13 + c * 5]).collect();
        assert_eq!(widths, [1, 1, 1, 2, 1, 1, 1, 1, 2, 2, 2, 1, 1, 2]);
        assert_eq!(read_all(&bytes).unwrap(), records);
    }
}
