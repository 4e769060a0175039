//! WAL segment files: creation, recovery and in-place reads.
//!
//! ```text
//! file header (40 bytes)
//!      0     8  magic      "LODEWAL\0"
//!      8     4  version    u32 LE, 1
//!     12     4  flags      u32 LE: bit 0 = restart (replicated logs: the
//!                          log restarts at first_index, the entries before
//!                          it were purged under a snapshot); other bits zero
//!     16     8  first_index  log index of the first frame, u64 LE
//!     24     8  first_seq    seq of the first record, u64 LE
//!     32     4  crc        crc32c of bytes 0..32, u32 LE
//!     36     4  reserved   zero
//!     40   ...  frames (see lode_codec's frame layout), back to back
//! ```
//!
//! Owns the bytes of WAL files. Never writes a frame (the writer thread
//! does) and never trusts what it reads: every failure names file and
//! offset.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lode_codec::{Frame, decode_frame, decode_frame_unchecksummed};
use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, Result};
use crate::options::RecoveryMode;

const MAGIC: &[u8; 8] = b"LODEWAL\0";
const VERSION: u32 = 1;
pub(crate) const FILE_HEADER_LEN: u64 = 40;
/// Header flag: this file's first index does not follow the previous file's
/// last (a replicated log restarted after a purge past its end).
pub(crate) const RESTART: u32 = 1;
/// Header flag: this file starts the log after an installed snapshot, at
/// a later index and a later seq than the previous file ended (the
/// snapshot's segments hold the records between).
pub(crate) const SNAPSHOT: u32 = 2;
/// Maps grow in steps of this size so the writer rarely remaps.
const MAP_STEP: u64 = 64 << 20;

/// Where one frame is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLoc {
    pub(crate) index: u64,
    pub(crate) first_seq: u64,
    pub(crate) count: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
}

impl FrameLoc {
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count)
    }
}

/// A WAL file known to the engine: its frames and a read-only map of it.
#[derive(Debug)]
pub(crate) struct WalSegment {
    pub(crate) path: PathBuf,
    pub(crate) first_index: u64,
    pub(crate) first_seq: u64,
    pub(crate) frames: Vec<FrameLoc>,
    /// Bytes of whole, durable frames (header included).
    pub(crate) len: u64,
    pub(crate) map: Arc<Mmap>,
}

/// What recovery cut from the tail of the newest WAL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailCut {
    pub path: PathBuf,
    /// Offset of the first byte cut.
    pub offset: u64,
    pub bytes: u64,
    /// Why the frame at `offset` was rejected.
    pub reason: String,
}

pub(crate) fn file_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

/// Lists WAL files of `dir` by first index, oldest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    // A name is only a hint for ordering; `recover` checks it against the
    // header.
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(Error::io("read directory", dir))? {
        let entry = entry.map_err(Error::io("read directory", dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(index) = stem.parse::<u64>() {
            files.push((index, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

fn encode_header(first_index: u64, first_seq: u64, flags: u32) -> [u8; FILE_HEADER_LEN as usize] {
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&flags.to_le_bytes());
    header[16..24].copy_from_slice(&first_index.to_le_bytes());
    header[24..32].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..32]);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A WAL file's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    first_index: u64,
    first_seq: u64,
    flags: u32,
}

fn decode_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    let header = bytes
        .get(..FILE_HEADER_LEN as usize)
        .ok_or_else(|| Error::corrupt(path, 0, "file shorter than its header"))?;
    let field = |at: usize| -> [u8; 8] {
        let mut out = [0u8; 8];
        out.copy_from_slice(header.get(at..at + 8).unwrap_or(&[0; 8]));
        out
    };
    if header.get(0..8) != Some(MAGIC.as_slice()) {
        return Err(Error::corrupt(path, 0, "not a lode WAL file (bad magic)"));
    }
    let stored_crc = u32::from_le_bytes(field(32)[..4].try_into().unwrap_or([0; 4]));
    let crc = crc32c::crc32c(header.get(0..32).unwrap_or_default());
    if stored_crc != crc {
        return Err(Error::corrupt(
            path,
            32,
            format!("header checksum {stored_crc:#010x} != {crc:#010x}"),
        ));
    }
    let version = u32::from_le_bytes(field(8)[..4].try_into().unwrap_or([0; 4]));
    if version != VERSION {
        return Err(Error::corrupt(
            path,
            8,
            format!("unsupported WAL version {version}"),
        ));
    }
    let flags = u32::from_le_bytes(field(8)[4..].try_into().unwrap_or([0; 4]));
    if flags & !(RESTART | SNAPSHOT) != 0 {
        return Err(Error::corrupt(
            path,
            12,
            format!("unknown header flags {flags:#x}"),
        ));
    }
    Ok(Header {
        first_index: u64::from_le_bytes(field(16)),
        first_seq: u64::from_le_bytes(field(24)),
        flags,
    })
}

fn map_file(file: &File, path: &Path, len: u64) -> Result<Arc<Mmap>> {
    let map_len = len.div_ceil(MAP_STEP).max(1) * MAP_STEP;
    // SAFETY: the engine holds the data directory's lock, so no other lode
    // process writes this file. This process appends to it, and shortens it
    // only in two places: recovery, before mapping, and a replicated log's
    // `cut_after`, under the state write lock. Readers copy frame locations
    // under the state read lock and only touch offsets below the durable
    // length of frames that exist at that moment; a cut removes only frames
    // that were never applied, which record readers never see, and log
    // readers copy frame bytes while holding the read lock. So no access
    // lands beyond the file's end.
    #[expect(unsafe_code, reason = "memory-mapped WAL reads; invariant above")]
    let map = unsafe { MmapOptions::new().len(map_len as usize).map(file) };
    map.map(Arc::new).map_err(Error::io("mmap", path))
}

/// Creates a new WAL file and syncs it and its directory; returns the file
/// opened for appending, positioned after the header. `flags` is
/// [`RESTART`] or 0. A file of the same name is replaced.
pub(crate) fn create(
    dir: &Path,
    first_index: u64,
    first_seq: u64,
    flags: u32,
) -> Result<(File, WalSegment)> {
    let path = dir.join(file_name(first_index));
    let tmp = dir.join(format!("{}.tmp", file_name(first_index)));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&tmp)
        .map_err(Error::io("create", &tmp))?;
    file.write_all(&encode_header(first_index, first_seq, flags))
        .map_err(Error::io("write", &tmp))?;
    file.sync_all().map_err(Error::io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename", &tmp))?;
    sync_dir(dir)?;
    let map = map_file(&file, &path, FILE_HEADER_LEN)?;
    let segment = WalSegment {
        path,
        first_index,
        first_seq,
        frames: Vec::new(),
        len: FILE_HEADER_LEN,
        map,
    };
    Ok((file, segment))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync directory", dir))
}

/// Result of reading one WAL file back.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) segment: WalSegment,
    pub(crate) file: File,
    pub(crate) cut: Option<TailCut>,
}

/// Reads a WAL file back, checking every frame.
///
/// `expected` is the (index, seq) the file must start at; `None` takes the
/// header as it is (the oldest file of a replicated log). A file flagged
/// [`RESTART`] may start at a later index, never at another seq; one
/// flagged [`SNAPSHOT`] at a later index and a later seq. A bad
/// frame in a file that is not the newest (`is_last == false`) is corruption; in the
/// newest it is a torn tail, cut back to the last whole frame, unless
/// valid frames follow it and `mode` is `TolerateTornTail`.
pub(crate) fn recover(
    path: &Path,
    expected: Option<(u64, u64)>,
    is_last: bool,
    mode: RecoveryMode,
) -> Result<Recovered> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))?;
    let file_len = file.metadata().map_err(Error::io("stat", path))?.len();
    let map = map_file(&file, path, file_len)?;
    let bytes = map.get(..file_len as usize).unwrap_or_default();
    let Header {
        first_index,
        first_seq,
        flags,
    } = decode_header(path, bytes)?;
    if path.file_name().and_then(|n| n.to_str()) != Some(file_name(first_index).as_str()) {
        return Err(Error::corrupt(
            path,
            16,
            format!("file name does not match its first index {first_index}"),
        ));
    }
    let (expected_index, expected_seq) = expected.unwrap_or((first_index, first_seq));
    let restarts = flags & RESTART != 0 && first_index > expected_index;
    let after_snapshot =
        flags & SNAPSHOT != 0 && first_index > expected_index && first_seq >= expected_seq;
    if !after_snapshot
        && (first_seq != expected_seq || (first_index != expected_index && !restarts))
    {
        let (expected_index, expected_seq) = (expected_index, expected_seq);
        return Err(Error::corrupt(
            path,
            16,
            format!(
                "file starts at index {first_index}, seq {first_seq}; the log expects index {expected_index}, seq {expected_seq}"
            ),
        ));
    }
    let (frames, good_len, failure) = scan_frames(bytes, first_index, first_seq);
    let mut cut = None;
    if let Some(reason) = failure {
        if !is_last {
            return Err(Error::corrupt(path, good_len, reason));
        }
        let valid_after = match mode {
            RecoveryMode::TolerateTornTail => find_valid_frame_after(bytes, good_len),
            RecoveryMode::PointInTime => None,
        };
        if let Some(at) = valid_after {
            return Err(Error::corrupt(
                path,
                good_len,
                format!(
                    "{reason}; a valid frame follows at offset {at}, so this is not a torn tail \
                     (open with RecoveryMode::PointInTime to cut here anyway)"
                ),
            ));
        }
        cut = Some(TailCut {
            path: path.to_owned(),
            offset: good_len,
            bytes: file_len - good_len,
            reason,
        });
    }
    drop(map);
    if cut.is_some() {
        file.set_len(good_len)
            .map_err(Error::io("truncate", path))?;
        file.sync_all().map_err(Error::io("fsync", path))?;
    }
    let map = map_file(&file, path, good_len)?;
    let segment = WalSegment {
        path: path.to_owned(),
        first_index,
        first_seq,
        frames,
        len: good_len,
        map,
    };
    Ok(Recovered { segment, file, cut })
}

/// Walks frames from the file header on; returns the frames, the length of
/// the valid prefix and, if it stopped early, why.
fn scan_frames(
    bytes: &[u8],
    first_index: u64,
    first_seq: u64,
) -> (Vec<FrameLoc>, u64, Option<String>) {
    let mut frames: Vec<FrameLoc> = Vec::new();
    let mut offset = FILE_HEADER_LEN;
    let (mut index, mut seq) = (first_index, first_seq);
    while offset < bytes.len() as u64 {
        let rest = bytes.get(offset as usize..).unwrap_or_default();
        let loc = match check_frame(rest, index, seq, offset) {
            Ok(loc) => loc,
            Err(reason) => return (frames, offset, Some(reason)),
        };
        offset += u64::from(loc.len);
        index += 1;
        seq = loc.end_seq();
        frames.push(loc);
    }
    (frames, offset, None)
}

fn check_frame(
    bytes: &[u8],
    index: u64,
    seq: u64,
    offset: u64,
) -> std::result::Result<FrameLoc, String> {
    let frame = decode_frame(bytes).map_err(|e| e.to_string())?;
    if frame.index != index {
        return Err(format!(
            "frame index {} where {index} was expected",
            frame.index
        ));
    }
    // The trailer gives count and time range; the records themselves are
    // checked when read. Other kinds hold no records.
    let (count, (min_ts, max_ts)) = if frame.kind.holds_records() {
        let batch = frame.batch().map_err(|e| e.to_string())?;
        (batch.len() as u32, batch.ts_range())
    } else {
        (0, (i64::MAX, i64::MIN))
    };
    Ok(FrameLoc {
        index,
        first_seq: seq,
        count,
        offset,
        len: frame.encoded_len() as u32,
        min_ts,
        max_ts,
    })
}

/// Looks for any checksum-valid frame past `from`: evidence that the bad
/// bytes at `from` are not a torn tail.
fn find_valid_frame_after(bytes: &[u8], from: u64) -> Option<u64> {
    (from + 1..bytes.len() as u64).find(|&at| {
        bytes
            .get(at as usize..)
            .is_some_and(|rest| decode_frame(rest).is_ok_and(|f| f.index > 0))
    })
}

impl WalSegment {
    pub(crate) fn next_index(&self) -> u64 {
        self.frames.last().map_or(self.first_index, |f| f.index + 1)
    }

    pub(crate) fn end_seq(&self) -> u64 {
        self.frames.last().map_or(self.first_seq, FrameLoc::end_seq)
    }

    pub(crate) fn records(&self) -> u64 {
        self.end_seq() - self.first_seq
    }

    /// Position in `frames` of the frame holding `seq`.
    pub(crate) fn frame_position(&self, seq: u64) -> Option<usize> {
        let pos = self.frames.partition_point(|f| f.end_seq() <= seq);
        self.frames
            .get(pos)
            .filter(|f| f.first_seq <= seq)
            .map(|_| pos)
    }

    /// Forgets the frames at or below `index` (an installed snapshot holds
    /// their records, and the log no longer holds them): the file then
    /// starts at its first later frame. A file with no later frame is
    /// left as it is.
    pub(crate) fn skip_through(&mut self, index: u64) {
        let keep = self.frames.partition_point(|f| f.index <= index);
        if let Some(first) = self.frames.get(keep).copied() {
            self.frames.drain(..keep);
            self.first_index = first.index;
            self.first_seq = first.first_seq;
        }
    }

    /// The index of the last frame, if any.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.frames.last().map(|f| f.index)
    }

    /// Cuts the frames after `index` (all of them for `None`) from the file
    /// and syncs it. The caller holds the state write lock (see `map_file`).
    pub(crate) fn cut_after(&mut self, index: Option<u64>) -> Result<()> {
        let keep = index.map_or(0, |i| self.frames.partition_point(|f| f.index <= i));
        let Some(first_cut) = self.frames.get(keep) else {
            return Ok(());
        };
        let len = first_cut.offset;
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(Error::io("open", &self.path))?;
        file.set_len(len)
            .map_err(Error::io("truncate", &self.path))?;
        file.sync_all().map_err(Error::io("fsync", &self.path))?;
        self.frames.truncate(keep);
        self.len = len;
        Ok(())
    }

    /// Appends newly durable frames; remaps when the file outgrew the map.
    pub(crate) fn extend(&mut self, file: &File, frames: &[FrameLoc], len: u64) -> Result<()> {
        if len > self.map.len() as u64 {
            self.map = map_file(file, &self.path, len)?;
        }
        self.frames.extend_from_slice(frames);
        self.len = len;
        Ok(())
    }
}

/// Reads a frame known to be whole and durable, checking it again: the map
/// is shared with the disk, and disk bytes are never trusted.
pub(crate) fn read_frame<'a>(map: &'a Mmap, path: &Path, loc: &FrameLoc) -> Result<Frame<'a>> {
    decode_frame(frame_bytes(map, path, loc)?).map_err(|e| Error::corrupt(path, loc.offset, e))
}

/// A frame of the log's in-memory index, for reads: its checksum was
/// checked when it was written (the writer computed it from these bytes)
/// or recovered, so a read checks bounds and records, not the checksum
/// again (that was 7.5 µs of each point read of a 1,000-record frame).
/// Sealing reads frames with [`read_frame`], checksum included.
pub(crate) fn read_indexed_frame<'a>(
    map: &'a Mmap,
    path: &Path,
    loc: &FrameLoc,
) -> Result<Frame<'a>> {
    decode_frame_unchecksummed(frame_bytes(map, path, loc)?)
        .map_err(|e| Error::corrupt(path, loc.offset, e))
}

fn frame_bytes<'a>(map: &'a Mmap, path: &Path, loc: &FrameLoc) -> Result<&'a [u8]> {
    let start = loc.offset as usize;
    map.get(start..start + loc.len as usize)
        .ok_or_else(|| Error::corrupt(path, loc.offset, "frame beyond the mapped file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_header(7, 99, RESTART);
        assert_eq!(
            decode_header(Path::new("x"), &header).unwrap(),
            Header {
                first_index: 7,
                first_seq: 99,
                flags: RESTART
            }
        );
        let mut bad = header;
        bad[20] ^= 1;
        assert!(matches!(
            decode_header(Path::new("x"), &bad),
            Err(Error::Corrupt { offset: 32, .. })
        ));
        assert!(decode_header(Path::new("x"), &header[..10]).is_err());
    }
}
