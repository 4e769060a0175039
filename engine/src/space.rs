//! Free space on the data directory's filesystem, and the floor below
//! which the engine refuses new writes (the etcd `NOSPACE` alarm's idea:
//! refuse before the disk is full, keep serving reads, resume on its own
//! once space is freed).
//!
//! The writer measures after its work at most every [`CHECK_EVERY`] (one
//! `statvfs`), and a write that fails with `ENOSPC` (or `EDQUOT`) marks the space low
//! at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often the writer measures the free space.
pub(crate) const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Once low, free bytes needed above the floor before writes resume: a
/// tenth of the floor, at least this.
const MARGIN: u64 = 1 << 20;

/// The default floor's largest value: 1 GiB...
const DEFAULT_FLOOR_MAX: u64 = 1 << 30;
/// ... or this fraction of the filesystem, whichever is smaller.
const DEFAULT_FLOOR_DIVISOR: u64 = 20;

/// Free space of a data directory's filesystem and its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Space {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
    /// Below this many free bytes writes are refused (0: never).
    pub floor: u64,
    /// Writes are refused: free space is below the floor, or the last
    /// write found the disk full.
    pub low: bool,
}

/// The floor for a filesystem of `total` bytes: `configured`, or else the
/// smaller of 1 GiB and 5% of the filesystem.
pub(crate) fn floor(configured: Option<u64>, total: u64) -> u64 {
    configured.unwrap_or((total / DEFAULT_FLOOR_DIVISOR).min(DEFAULT_FLOOR_MAX))
}

/// Free and total bytes of the filesystem holding `dir`.
fn measure(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    #[allow(unsafe_code)]
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the
    // right type, both alive for the call; statvfs writes only `stat`.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        stat.assume_init()
    };
    let unit = stat.f_frsize as u64;
    Ok((
        (stat.f_bavail as u64).saturating_mul(unit),
        (stat.f_blocks as u64).saturating_mul(unit),
    ))
}

/// The last measure, shared by the writer (which takes it) and every
/// reader of [`crate::Engine::space`] and the write path.
#[derive(Debug, Default)]
pub(crate) struct SpaceWatch {
    free: AtomicU64,
    total: AtomicU64,
    floor: AtomicU64,
    low: AtomicBool,
}

impl SpaceWatch {
    /// Measures `dir` again; a failed measure changes nothing.
    pub(crate) fn update(&self, dir: &Path, configured: Option<u64>) {
        let Ok((free, total)) = measure(dir) else {
            return;
        };
        let floor = floor(configured, total);
        // Once low, low until the free space passes the floor by a
        // margin: writes (and a cluster's alarm) do not flap at the floor
        // or resume for a few bytes freed on a full disk.
        let margin = (floor / 10).max(MARGIN);
        let low = free < floor || (self.low() && free < floor.saturating_add(margin));
        self.free.store(free, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        self.floor.store(floor, Ordering::Relaxed);
        self.low.store(low, Ordering::Release);
    }

    /// A write failed with `ENOSPC` or `EDQUOT`.
    pub(crate) fn disk_full(&self) {
        self.low.store(true, Ordering::Release);
    }

    pub(crate) fn low(&self) -> bool {
        self.low.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self) -> Space {
        Space {
            free: self.free.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            floor: self.floor.load(Ordering::Relaxed),
            low: self.low(),
        }
    }
}

/// Whether `error` says the disk is full, or the user's quota of it is
/// spent (statvfs does not see a quota: the write is refused as on a
/// full disk, and the next one tries again).
pub(crate) fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_and_a_spent_quota_are_told_from_other_errors() {
        let os = std::io::Error::from_raw_os_error;
        assert!(is_disk_full(&os(libc::ENOSPC)));
        assert!(is_disk_full(&os(libc::EDQUOT)));
        assert!(!is_disk_full(&os(libc::EIO)));
        assert!(!is_disk_full(&std::io::Error::other("no space")));
    }

    #[test]
    fn the_default_floor_is_a_gibibyte_or_a_twentieth_of_a_small_disk() {
        assert_eq!(floor(None, 100 << 30), 1 << 30);
        assert_eq!(floor(None, 10 << 30), (10 << 30) / 20);
        assert_eq!(floor(Some(5), 100 << 30), 5);
        assert_eq!(floor(Some(0), 100 << 30), 0);
    }

    #[test]
    fn low_space_stays_low_until_the_floor_is_passed_by_a_margin() {
        let dir = tempfile::tempdir().unwrap();
        let watch = SpaceWatch::default();
        watch.update(dir.path(), Some(0));
        assert!(!watch.low(), "{:?}", watch.get());
        watch.disk_full();
        assert!(watch.low());
        let free = watch.get().free;
        // Above the floor but within the margin: still low.
        watch.update(dir.path(), Some(free - MARGIN / 4));
        assert!(watch.low(), "{:?}", watch.get());
        // Passed by the margin: writes resume.
        watch.update(dir.path(), Some(1));
        assert!(!watch.low(), "{:?}", watch.get());
        watch.update(dir.path(), Some(free / 2));
        assert!(!watch.low(), "{:?}", watch.get());
        watch.update(dir.path(), Some(u64::MAX));
        assert!(watch.low());
    }
}
