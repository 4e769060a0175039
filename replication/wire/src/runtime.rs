//! The async runtime openraft runs on: tokio, with a random source a test
//! can seed.
//!
//! openraft draws its election timeouts (and the first wait of its
//! ticks) from the runtime's `thread_rng`. tokio's is seeded from the
//! system, so no two runs elect alike. [`LodeRuntime`] is tokio in every
//! other respect; its random source is a per-thread [`SmallRng`], seeded
//! from the system unless [`seed_this_thread`] installed a seed. The
//! simulation tests run every node on one thread of a current-thread
//! runtime with its clock paused: seeded there, the timeouts of every
//! node follow from the seed.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};
use rand::SeedableRng;
use rand::rngs::SmallRng;

type Tokio = openraft::TokioRuntime;

thread_local! {
    /// The next seed of this thread's draws, once a test installed one.
    static SEED: Cell<Option<SplitMix>> = const { Cell::new(None) };
}

/// From now on, this thread's draws follow from `seed`.
pub fn seed_this_thread(seed: u64) {
    SEED.with(|s| s.set(Some(SplitMix::new(seed))));
}

/// SplitMix64, a small seeded generator: the sequence `new(seed)`
/// starts is the same on every machine.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = self.0;
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A draw in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A draw in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }
}

/// tokio, with [`seed_this_thread`]'s random source.
#[derive(Debug)]
pub struct LodeRuntime(Tokio);

impl AsyncRuntime for LodeRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> SmallRng {
        let seeded = SEED.with(|s| {
            let mut state = s.take()?;
            let next = state.next_u64();
            s.set(Some(state));
            Some(next)
        });
        match seeded {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }

    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        LodeRuntime(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        let draw = |seed| {
            std::thread::spawn(move || {
                seed_this_thread(seed);
                (0..8)
                    .map(|_| LodeRuntime::thread_rng().random_range(150..300u64))
                    .collect::<Vec<_>>()
            })
            .join()
            .expect("thread")
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
