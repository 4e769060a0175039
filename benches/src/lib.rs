//! Helpers shared by lode's benchmarks: child-process runs (so each
//! measurement has its own peak RSS), medians, sizes on disk.

// Benchmarks read only their own generated data.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Peak resident set size of this process so far, in KiB (Linux).
pub fn peak_rss_kib() -> u64 {
    status_field("VmHWM:")
}

/// Current resident set size, in KiB (Linux).
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub use lode_tools::{disk_bytes, median};

/// Runs this same executable with `args` and parses the last line of its
/// standard output as JSON.
pub fn run_child<T: serde::de::DeserializeOwned>(args: &[String]) -> Result<T, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "child {:?} failed ({}): {}",
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("child output {last:?}: {e}"))
}

/// The SQLite FTS5 reference script: where this crate was built, or, for a
/// binary run from another checkout, under `benches/py/` of the current
/// directory (a repository root).
pub fn sqlite_script() -> Result<PathBuf, String> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/sqlite_fts5.py");
    let here = Path::new("benches/py/sqlite_fts5.py").to_owned();
    [built.clone(), here.clone()]
        .into_iter()
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "the SQLite reference script is at neither {} nor {} (run from the repository root, or pass --no-sqlite)",
                built.display(),
                here.display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
