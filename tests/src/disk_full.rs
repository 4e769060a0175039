//! A full disk refuses writes, keeps reads and loses nothing: below its
//! free-space floor (or on `ENOSPC`) an engine answers "no space" without
//! poisoning itself, and a cluster refuses writes everywhere while any
//! member's disk is low (its alarm), then resumes on its own once space
//! is freed. On small `tmpfs` mounts (the tests run as root).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lode_engine::{Engine, Error, LogRecord, Options};

use crate::cluster::{Cluster3, DISK_FLOOR, Node, ask};

/// A `tmpfs` of `mib` MiB mounted on a fresh directory, unmounted (and
/// its directory removed) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        mount_tmpfs(dir.path(), mib);
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

fn mount_tmpfs(at: &Path, mib: u64) {
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(at)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "mount a tmpfs on {} (needs root)",
        at.display()
    );
}

fn unmount(at: &Path) {
    let _ = Command::new("umount").arg("-l").arg(at).status();
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    #[allow(unsafe_code)]
    // SAFETY: a NUL-terminated path and a buffer of the right type, alive
    // for the call.
    let stat = unsafe {
        assert_eq!(libc::statvfs(path.as_ptr(), stat.as_mut_ptr()), 0);
        stat.assume_init()
    };
    stat.f_bavail as u64 * stat.f_frsize as u64
}

/// Writes a file in `dir` until the disk has at most `leave` bytes free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 256 << 10];
    while free_bytes(dir) > leave {
        let want = (free_bytes(dir) - leave).min(chunk.len() as u64) as usize;
        if file.write_all(&chunk[..want]).is_err() {
            break;
        }
    }
    file.sync_all().unwrap();
    path
}

/// A batch of 16 records of about 4 KiB, numbered from `first`.
fn big_batch(first: u64) -> Vec<LogRecord> {
    (first..first + 16)
        .map(|i| {
            let mut record = crate::record_for(i);
            record.message = format!("record {i} {}", "z".repeat(4 << 10));
            record
        })
        .collect()
}

/// Appends until the engine refuses; the records acknowledged. Every
/// refusal must be "no space" (never a poisoned engine).
fn append_until_refused(engine: &Engine, acked: &mut u64) {
    for _ in 0..100_000 {
        match engine.append(&big_batch(*acked)) {
            Ok(seqs) => *acked += seqs.end - seqs.start,
            Err(Error::NoSpace { .. }) => return,
            Err(e) => panic!("refused with {e}, not for want of space"),
        }
    }
    panic!("never refused");
}

/// Appends, waiting up to 30 s for the engine to take writes again.
fn append_once_resumed(engine: &Engine, acked: &mut u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match engine.append(&big_batch(*acked)) {
            Ok(seqs) => {
                *acked += seqs.end - seqs.start;
                return;
            }
            Err(Error::NoSpace { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("writes did not resume: {e}"),
        }
    }
}

fn readable(engine: &Engine) -> u64 {
    engine.scan(..).map(Result::unwrap).count() as u64
}

/// Below the floor, and then on a disk that is really full: appends are
/// refused with "no space", the engine is not poisoned, what was
/// acknowledged is read back (and after a reopen), and appends resume
/// once space is freed.
#[test]
fn an_engine_refuses_writes_on_a_low_or_full_disk_and_resumes_when_space_is_freed() {
    let disk = Tmpfs::mount(64);
    let data = disk.path().join("data");
    let mut acked = 0;
    // The floor: 24 MiB. A filler leaves 16 MiB.
    let floor = Options {
        free_space_floor: Some(24 << 20),
        ..Options::default()
    };
    let engine = Engine::open(&data, floor.clone()).unwrap();
    append_once_resumed(&engine, &mut acked);
    let filler = fill(disk.path(), 16 << 20);
    // Refused once the writer has measured (at most a second).
    append_until_refused(&engine, &mut acked);
    assert!(engine.space().low, "{:?}", engine.space());
    assert!(engine.stats().poisoned.is_none());
    assert_eq!(readable(&engine), acked);
    std::fs::remove_file(&filler).unwrap();
    append_once_resumed(&engine, &mut acked);
    assert_eq!(readable(&engine), acked);
    drop(engine);

    // No floor: the disk fills up (the WAL's write fails with ENOSPC).
    let no_floor = Options {
        free_space_floor: Some(0),
        ..Options::default()
    };
    let engine = Engine::open(&data, no_floor.clone()).unwrap();
    let filler = fill(disk.path(), 8 << 20);
    append_until_refused(&engine, &mut acked);
    assert!(free_bytes(disk.path()) < 1 << 20, "the disk is full");
    assert!(engine.stats().poisoned.is_none(), "not poisoned");
    assert_eq!(readable(&engine), acked);
    std::fs::remove_file(&filler).unwrap();
    append_once_resumed(&engine, &mut acked);
    assert_eq!(readable(&engine), acked);
    engine.seal().unwrap();
    drop(engine);
    let engine = Engine::open(&data, no_floor).unwrap();
    assert_eq!(readable(&engine), acked, "the same after a reopen");
}

/// Posts one small JSON-lines batch to `node`: its HTTP status.
fn post(node: &Node, n: u64) -> u16 {
    let lines = format!("{{\"message\":\"diskfull {n}\"}}\n");
    ask(node, "POST", "/api/v1/ingest", "", lines.as_bytes()).map_or(0, |(status, _)| status)
}

/// Posts through `node` until it answers `want`; the batches taken.
fn post_until(node: &Node, want: u16, sent: &mut u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut taken = 0;
    loop {
        let status = post(node, *sent);
        *sent += 1;
        if status == want {
            return taken;
        }
        if status == 200 {
            taken += 1;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} within {within:?} (last: {status})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(node: &Node) -> u64 {
    crate::cluster::linearizable_count(node, "diskfull")
}

/// One follower's disk falls below its floor: its alarm stops writes on
/// every node (507), reads go on, and once its space is freed writes
/// resume; every acknowledged record is on every node once.
#[test]
fn a_members_low_disk_stops_the_clusters_writes_until_space_is_freed() {
    let mut cluster = Cluster3::start_on_loopback(DISK_FLOOR);
    let leader = cluster.leader(Duration::from_secs(30)).expect("a leader");
    let low = cluster.others(leader)[0];
    // The follower's data moves onto a 64 MiB tmpfs.
    let data = cluster.nodes[&low].data.clone();
    cluster.nodes.get_mut(&low).unwrap().kill();
    let aside = data.with_extension("aside");
    std::fs::rename(&data, &aside).unwrap();
    std::fs::create_dir(&data).unwrap();
    mount_tmpfs(&data, 64);
    let unmount_at_end = Unmount(data.clone());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(aside.join("."))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.nodes.get_mut(&low).unwrap().start();

    let mut sent = 0;
    let node = |id| &cluster.nodes[&id];
    let mut taken = post_until(node(leader), 200, &mut sent, Duration::from_secs(60)) + 1;
    let filler = fill(&data, 8 << 20);
    taken += post_until(node(leader), 507, &mut sent, Duration::from_secs(30));
    for id in cluster.nodes.keys() {
        taken += post_until(node(*id), 507, &mut sent, Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        while node(*id).status().map(|s| s["no_space"].clone()) != Some(serde_json::json!([low])) {
            assert!(Instant::now() < deadline, "node {id} shows the alarm");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for id in cluster.nodes.keys() {
        assert_eq!(count(node(*id)), taken, "node {id} reads");
    }
    std::fs::remove_file(&filler).unwrap();
    // The first 200 after the alarm clears is taken too.
    taken += post_until(node(leader), 200, &mut sent, Duration::from_secs(30)) + 1;
    cluster.settle(Duration::from_secs(60));
    for id in cluster.nodes.keys() {
        assert_eq!(count(node(*id)), taken, "node {id} holds each record once");
    }
    for node in cluster.nodes.values_mut() {
        node.kill();
    }
    drop(unmount_at_end);
}

/// Unmounts a path on drop (also when the test fails).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}
