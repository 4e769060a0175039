//! lode's cross-crate tests, in one test binary (each binary links
//! RocksDB, so they are kept few). Helpers shared by the tests live here.

// Tests index their own fixtures and fail loudly: that is what they are for.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use lode_engine::{Level, LogRecord};

/// The record a test writes at `seq`: a pure function of `seq`, so a
/// reader can check any record it finds without knowing what was acked.
/// Makes this process (a test's child: a server, a node, an importer)
/// die with the test thread that started it, so that a test that ends
/// any way at all, a panic during a drop or a harness that exits
/// included, leaves no process behind.
#[cfg(test)]
pub(crate) fn die_with_parent() {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and touches no
    // memory of ours.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    assert_eq!(set, 0, "prctl(PR_SET_PDEATHSIG)");
}

pub fn record_for(seq: u64) -> LogRecord {
    let levels = [
        Level::Trace,
        Level::Debug,
        Level::Info,
        Level::Warn,
        Level::Error,
        Level::Fatal,
    ];
    let filler = "x".repeat((seq % 97) as usize);
    LogRecord {
        ts: 1_800_000_000_000_000_000 + (seq as i64) * 1_000_000,
        level: levels
            .get((seq % 6) as usize)
            .cloned()
            .unwrap_or(Level::Info),
        service: format!("svc-{}", seq % 7),
        host: format!("host-{}", seq % 13),
        attrs: vec![("seq".into(), seq.to_string())],
        message: format!("record {seq} {filler}"),
        tenant: String::new(),
    }
}

#[cfg(test)]
mod auth;
#[cfg(test)]
mod clients;
#[cfg(test)]
mod cluster;
#[cfg(test)]
mod crash;
#[cfg(test)]
mod disk_full;
#[cfg(test)]
mod exactly_once;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod hostile;
#[cfg(test)]
mod import;
#[cfg(test)]
mod logql;
#[cfg(test)]
mod model;
#[cfg(test)]
mod raft_log;
#[cfg(test)]
mod search;
#[cfg(test)]
mod server;
#[cfg(test)]
mod ui;
