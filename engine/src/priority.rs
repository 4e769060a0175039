//! Background threads' priority: lowered for good at their start
//! ([`lower_thread_priority`]), raised for a while when someone waits for
//! their work ([`hurry_background`]).
//!
//! Sealing and indexing run as `SCHED_IDLE` threads so that appends get
//! the CPU first. On a machine that other processes keep busy, an idle
//! thread gets almost nothing, and a reader that waits for the index (a
//! linearizable read, a test, the CLI's `--wait`) would wait without
//! bound. While such a reader waits, every idle thread of the process is
//! made a normal one (`SCHED_OTHER`, nice 0: a fair share beside the
//! other processes), and made idle again once no reader waits. Raising a
//! thread out of `SCHED_IDLE` needs `CAP_SYS_NICE` or an `RLIMIT_NICE`
//! that allows nice 0 (systemd: `LimitNICE=+0`); without either the
//! threads stay idle and the reader waits as before.

use std::sync::{Mutex, PoisonError};

use crate::options::Background;

/// Lowers the calling thread's scheduling priority as `priority` says
/// (Linux: priority is per thread, and threads it spawns inherit it).
/// Background work (sealing, indexing, merging) runs this way so that the
/// CPU goes to acknowledging appends first. Best effort: a failure is
/// logged and changes nothing.
pub fn lower_thread_priority(priority: Background) {
    let result = match priority {
        Background::Normal => return,
        Background::Nice(niceness) => {
            #[allow(unsafe_code)]
            // SAFETY: setpriority takes plain integers and touches no memory
            // of ours; on Linux, PRIO_PROCESS with who = 0 is the calling
            // thread.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, 0, niceness.clamp(0, 19))
            }
        }
        Background::Idle => set_policy(0, libc::SCHED_IDLE),
    };
    if result != 0 {
        tracing::debug!(
            ?priority,
            error = %std::io::Error::last_os_error(),
            "could not lower a background thread's priority"
        );
    }
}

/// Sets thread `tid`'s scheduling policy (0: the calling thread); 0 or -1
/// as `sched_setscheduler`.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> libc::c_int {
    let param = libc::sched_param { sched_priority: 0 };
    #[allow(unsafe_code)]
    // SAFETY: `param` is a valid sched_param that outlives the call; the
    // call reads it and touches no other memory of ours.
    unsafe {
        libc::sched_setscheduler(tid, policy, &raw const param)
    }
}

/// Readers waiting, and the threads raised for them.
struct Hurrying {
    waiting: usize,
    raised: Vec<libc::pid_t>,
}

static HURRYING: Mutex<Hurrying> = Mutex::new(Hurrying {
    waiting: 0,
    raised: Vec::new(),
});

/// While the returned guard lives, this process's `SCHED_IDLE` threads
/// run as normal ones (see the module documentation).
pub fn hurry_background() -> Hurry {
    let mut hurrying = HURRYING.lock().unwrap_or_else(PoisonError::into_inner);
    hurrying.waiting += 1;
    raise_idle(&mut hurrying);
    Hurry(())
}

/// Raises every `SCHED_IDLE` thread of this process: each look finds the
/// threads made idle since the last (a new sealer, a test's thread).
fn raise_idle(hurrying: &mut Hurrying) {
    let raised: Vec<_> = idle_threads()
        .into_iter()
        .filter(|&tid| set_policy(tid, libc::SCHED_OTHER) == 0)
        .collect();
    hurrying.raised.extend(raised);
}

/// Hurries background threads while the work they owe is overdue: a
/// position (a seq, a log index) that work should reach, not reached
/// within an age, or too far behind. Without it an idle thread beside
/// busy ones (this process's ingest, or other processes) may get no CPU
/// at all, and its backlog has no bound.
#[derive(Debug, Default)]
pub struct Overdue {
    hurry: Option<Hurry>,
    /// The position awaited, and since when.
    awaited: Option<(u64, std::time::Instant)>,
}

impl Overdue {
    /// Work has reached `done` and owes `owed`: hurried once a position
    /// owed has waited `age`, or more than `bound` is owed; calm again
    /// once nothing owed is that old and at most a quarter of `bound` is.
    pub fn check(&mut self, done: u64, owed: u64, bound: u64, age: std::time::Duration) {
        if done >= owed {
            self.awaited = None;
        } else if self.awaited.is_none_or(|(position, _)| done >= position) {
            self.awaited = Some((owed, std::time::Instant::now()));
        }
        let late = self
            .awaited
            .is_some_and(|(_, since)| since.elapsed() >= age);
        let behind = owed.saturating_sub(done);
        if (late || behind > bound) && self.hurry.is_none() {
            tracing::debug!(behind, late, "background work is overdue: it hurries");
            self.hurry = Some(hurry_background());
        } else if !late && behind <= bound / 4 {
            self.hurry = None;
        } else if let Some(hurry) = &self.hurry {
            hurry.again();
        }
    }

    /// Whether background threads are hurried now.
    pub fn hurried(&self) -> bool {
        self.hurry.is_some()
    }
}

/// Keeps the background threads raised; see [`hurry_background`].
#[derive(Debug)]
pub struct Hurry(());

impl Hurry {
    /// Raises the threads made idle since the hurry began (a thread that
    /// started meanwhile lowers itself at its start): a long wait calls
    /// this now and then.
    pub fn again(&self) {
        raise_idle(&mut HURRYING.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Drop for Hurry {
    fn drop(&mut self) {
        let mut hurrying = HURRYING.lock().unwrap_or_else(PoisonError::into_inner);
        hurrying.waiting -= 1;
        if hurrying.waiting == 0 {
            for tid in std::mem::take(&mut hurrying.raised) {
                // A thread that has exited meanwhile is simply not found.
                let _ = set_policy(tid, libc::SCHED_IDLE);
            }
        }
    }
}

/// The ids of this process's threads whose policy is `SCHED_IDLE`.
fn idle_threads() -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| task.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid| {
            #[allow(unsafe_code)]
            // SAFETY: sched_getscheduler takes a plain integer.
            let policy = unsafe { libc::sched_getscheduler(tid) };
            policy == libc::SCHED_IDLE
        })
        .collect()
}
