//! Damaged and historical on-disk states: torn tails, bit flips, missing
//! files, and the golden WAL of format version 1.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use lode_engine::{Engine, Error, Options, RecoveryMode};

use crate::record_for;

/// A WAL-only data directory of format version 1, written by
/// `golden_wal_v1_is_still_read` with `LODE_WRITE_GOLDEN=1`: three frames
/// holding `record_for(1..=30)`.
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/wal-v1");

fn append_seqs(engine: &Engine, seqs: std::ops::Range<u64>) {
    let batch: Vec<_> = seqs.clone().map(record_for).collect();
    let range = engine.append(&batch).expect("append");
    assert_eq!(range.start..range.end, seqs);
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("wal"))
        .expect("wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

fn all_records(engine: &Engine) -> Vec<lode_engine::Record> {
    engine.scan(..).collect::<Result<_, _>>().expect("scan")
}

/// Twenty appends into tiny segments with background sealing off: several
/// finished WAL files that stay unsealed. Returns them, oldest first.
fn unsealed_wal_files(dir: &Path) -> Vec<PathBuf> {
    let opts = Options {
        segment_bytes: 4096,
        background_sealing: false,
        ..Options::default()
    };
    let engine = Engine::open(dir, opts).expect("open");
    for start in (1..400).step_by(20) {
        append_seqs(&engine, start..start + 20);
    }
    engine.close().expect("close");
    let files = wal_files(dir);
    assert!(files.len() >= 3, "{} WAL files", files.len());
    files
}

/// Three appends (frames) of ten records each, closed without sealing.
fn three_frames(dir: &Path) -> PathBuf {
    let engine = Engine::open(dir, Options::default()).expect("open");
    append_seqs(&engine, 1..11);
    append_seqs(&engine, 11..21);
    append_seqs(&engine, 21..31);
    engine.close().expect("close");
    let files = wal_files(dir);
    assert_eq!(files.len(), 1);
    files.into_iter().next().expect("one wal file")
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = three_frames(dir.path());
    let len = fs::metadata(&wal).expect("stat").len();
    for cut in [1u64, 7, 30] {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(dir.path(), copy.path());
        let torn = copy.path().join("wal").join(wal.file_name().expect("name"));
        OpenOptions::new()
            .write(true)
            .open(&torn)
            .expect("open")
            .set_len(len - cut)
            .expect("truncate");
        let engine = Engine::open(copy.path(), Options::default()).expect("reopen with torn tail");
        let stats = engine.stats();
        assert_eq!(
            stats.next_seq, 21,
            "the torn third frame is gone, the first two stay"
        );
        assert_eq!(stats.recovery_cuts.len(), 1);
        assert_eq!(
            stats.recovery_cuts[0].bytes + stats.recovery_cuts[0].offset,
            len - cut
        );
        let records = all_records(&engine);
        assert_eq!(records.len(), 20);
        assert!(records.iter().all(|r| r.log == record_for(r.seq)));
        // Appends go on from the cut, with the same seqs the lost frame had.
        append_seqs(&engine, 21..26);
        engine.close().expect("close");
        let engine = Engine::open(copy.path(), Options::default()).expect("reopen");
        assert_eq!(all_records(&engine).len(), 25);
        assert!(engine.stats().recovery_cuts.is_empty());
    }
}

#[test]
fn bit_flip_with_valid_frames_after_is_corruption_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = three_frames(dir.path());
    let second_frame = frame_offsets(&wal)[1];
    flip_byte(&wal, second_frame + 40);
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::Corrupt {
            path,
            offset,
            reason,
        }) => {
            assert_eq!(path, wal);
            assert_eq!(offset, second_frame);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // The operator may choose to cut there.
    let opts = Options {
        recovery: RecoveryMode::PointInTime,
        ..Options::default()
    };
    let engine = Engine::open(dir.path(), opts).expect("point-in-time open");
    assert_eq!(engine.stats().next_seq, 11);
    assert_eq!(all_records(&engine).len(), 10);
}

#[test]
fn bit_flip_in_last_frame_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = three_frames(dir.path());
    let third = frame_offsets(&wal)[2];
    flip_byte(&wal, third + 30);
    let engine = Engine::open(dir.path(), Options::default()).expect("open");
    assert_eq!(engine.stats().next_seq, 21);
    assert_eq!(engine.stats().recovery_cuts[0].offset, third);
}

#[test]
fn damage_in_an_older_wal_file_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = unsealed_wal_files(dir.path());
    let older = &files[files.len() - 2];
    flip_byte(older, 60);
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, older);
            assert_eq!(offset, 40, "the first frame is the damaged one");
        }
        other => panic!("expected corruption of {}, got {other:?}", older.display()),
    }
}

#[test]
fn missing_wal_file_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = unsealed_wal_files(dir.path());
    fs::remove_file(&files[1]).expect("remove");
    match Engine::open(dir.path(), Options::default()) {
        Err(Error::Corrupt { path, reason, .. }) => {
            assert_eq!(path, files[2]);
            assert!(reason.contains("expects"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn golden_wal_v1_is_still_read() {
    let golden = Path::new(GOLDEN);
    if write_missing_golden(golden) {
        let scratch = tempfile::tempdir().expect("tempdir");
        let wal = three_frames(scratch.path());
        fs::create_dir_all(golden.join("wal")).expect("mkdir");
        fs::copy(
            &wal,
            golden.join("wal").join(wal.file_name().expect("name")),
        )
        .expect("copy");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(golden, dir.path());
    let engine = Engine::open(dir.path(), Options::default()).expect("open golden fixture");
    let records = all_records(&engine);
    assert_eq!(records.len(), 30);
    for record in &records {
        assert_eq!(record.log, record_for(record.seq));
    }
    assert!(engine.stats().recovery_cuts.is_empty());
    engine.seal().expect("the fixture seals");
    assert_eq!(engine.stats().sealed_records, 30);
}

/// A data directory of record format 1 (before records had a tenant),
/// written by `golden_data_v1_is_still_read` with `LODE_WRITE_GOLDEN=1`:
/// `record_for(1..=40)` sealed in RocksDB, `record_for(41..=60)` in the
/// WAL.
const GOLDEN_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/data-v1");

/// Records of the first format, sealed and in the WAL, are read as
/// records of the default tenant, and sealed again.
#[test]
fn golden_data_v1_is_still_read() {
    let golden = Path::new(GOLDEN_DATA);
    if write_missing_golden(golden) {
        write_golden(golden, record_for);
    }
    read_golden(golden, record_for, &[]);
}

/// A data directory of record format 3 (each sealed value a record's
/// tenant then its archive, one value per record), written by
/// `golden_data_v3_is_still_read` with `LODE_WRITE_GOLDEN=1`:
/// `record_for(1..=20)` of the default tenant and `record_for(21..=40)` of
/// tenant `acme` sealed in RocksDB, `record_for(41..=60)` of `acme` in the
/// WAL.
const GOLDEN_DATA_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/data-v3");

/// The record `golden_data_v3_is_still_read` expects at `seq`.
fn record_v3(seq: u64) -> lode_engine::LogRecord {
    let tenant = if seq > 20 { "acme" } else { "" };
    lode_engine::LogRecord {
        tenant: tenant.to_owned(),
        ..record_for(seq)
    }
}

/// Records sealed one value each, of two tenants, are read as they were
/// and sealed again in today's format.
#[test]
fn golden_data_v3_is_still_read() {
    let golden = Path::new(GOLDEN_DATA_V3);
    if write_missing_golden(golden) {
        write_golden(golden, record_v3);
    }
    read_golden(golden, record_v3, &[3, 20, 21, 39, 41]);
}

/// A data directory of manifest format 4 with chunks of version 1 (before
/// chunks had marks), written by `golden_data_v4_is_still_read` with
/// `LODE_WRITE_GOLDEN=1`: the records of `record_v3`, 1..=40 sealed in
/// one chunk, 41..=60 in the WAL.
const GOLDEN_DATA_V4: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/data-v4");

/// Records sealed in a chunk of the first chunk format are read as they
/// were and sealed again in today's.
#[test]
fn golden_data_v4_is_still_read() {
    let golden = Path::new(GOLDEN_DATA_V4);
    if write_missing_golden(golden) {
        write_golden(golden, record_v3);
    }
    read_golden(golden, record_v3, &[3, 20, 21, 39, 40, 41]);
}

/// Opens a copy of a golden data directory (`record(1..=40)` sealed,
/// `record(41..=60)` in the WAL) and checks its records, by a scan and
/// by `get_many` of `points`, as found, sealed and reopened.
fn read_golden(golden: &Path, record: fn(u64) -> lode_engine::LogRecord, points: &[u64]) {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(golden, dir.path());
    let engine = Engine::open(dir.path(), Options::default()).expect("open golden fixture");
    assert_eq!(
        engine.stats().sealed_records,
        40,
        "the fixture holds a sealed segment"
    );
    let check = |engine: &Engine| {
        let records = all_records(engine);
        assert_eq!(records.len(), 60);
        for r in &records {
            assert_eq!(r.log, record(r.seq));
        }
        let some: Vec<_> = engine.get_many(points).expect("get_many");
        let seqs: Vec<u64> = some.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, points);
        for r in &some {
            assert_eq!(r.log, record(r.seq));
        }
    };
    check(&engine);
    engine.seal().expect("the fixture's WAL seals");
    assert_eq!(engine.stats().sealed_records, 60);
    check(&engine);
    engine.close().expect("close");
    let engine = Engine::open(dir.path(), Options::default()).expect("reopen");
    check(&engine);
}

/// Whether to write the golden fixture `golden`: asked for with
/// `LODE_WRITE_GOLDEN=1`, and only when it is missing, so that a later
/// format never overwrites the fixture of an older one (delete it first
/// to write it again).
fn write_missing_golden(golden: &Path) -> bool {
    std::env::var_os("LODE_WRITE_GOLDEN").is_some() && !golden.exists()
}

/// Writes a golden data directory with today's code: `record(1..=40)`
/// sealed, `record(41..=60)` in the WAL.
fn write_golden(golden: &Path, record: fn(u64) -> lode_engine::LogRecord) {
    let scratch = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        background_sealing: false,
        ..Options::default()
    };
    let append = |engine: &Engine, seqs: std::ops::Range<u64>| {
        let batch: Vec<_> = seqs.clone().map(record).collect();
        let range = engine.append(&batch).expect("append");
        assert_eq!(range.start..range.end, seqs);
    };
    let engine = Engine::open(scratch.path(), opts.clone()).expect("open");
    append(&engine, 1..21);
    append(&engine, 21..41);
    engine.seal().expect("seal");
    engine.close().expect("close");
    let engine = Engine::open(scratch.path(), opts).expect("reopen");
    append(&engine, 41..61);
    engine.close().expect("close");
    copy_dir(scratch.path(), golden);
    remove_rocksdb_logs(&golden.join("db"));
}

/// RocksDB's own logs are not part of the format.
fn remove_rocksdb_logs(db: &Path) {
    for entry in fs::read_dir(db).expect("read") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("LOG") {
            fs::remove_file(&path).expect("remove");
        }
    }
}

/// Offsets of the frames of a WAL file, read from its length fields.
fn frame_offsets(wal: &Path) -> Vec<u64> {
    let mut bytes = Vec::new();
    fs::File::open(wal)
        .expect("open")
        .read_to_end(&mut bytes)
        .expect("read");
    let mut offsets = Vec::new();
    let mut at = 40usize;
    while at + 4 <= bytes.len() {
        offsets.push(at as u64);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 25 + len;
    }
    offsets
}

fn flip_byte(path: &Path, offset: u64) {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read");
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&[byte[0] ^ 0x10]).expect("write");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "lode.lock" {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
