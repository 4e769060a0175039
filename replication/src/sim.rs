//! A simulated network between nodes of one process, for seeded tests.
//!
//! Nodes started with [`ClusterNode::start_simulated`](crate::ClusterNode::start_simulated)
//! reach each other through a [`SimNet`] instead of QUIC: each request is
//! encoded as the wire message it would be, delayed, perhaps lost (the
//! request or its answer: the caller sees a timeout, as with a peer that
//! stopped answering), perhaps delivered twice, and answered by the
//! target's own handler. Every choice is drawn from the test's seed, the
//! link and the message's number on it, so a seed names a run's faults.
//!
//! Time is meant to be tokio's paused clock on a current-thread runtime:
//! [`SimNet::hold_clock`] keeps it still while any node has a write on
//! its way to disk (the engine's writer is a real thread that the clock
//! cannot see), so that an fsync takes no virtual time and the timeouts
//! and delays of the run are the seed's.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lode_replication_wire::NodeId;
pub use lode_replication_wire::runtime::{SplitMix, seed_this_thread};
use lode_replication_wire::wire::{self, Request, Response};
use openraft::errors::{NetworkError, RPCError, Unreachable};

use crate::net::{Handler, Sender};
use crate::store::Unflushed;

/// How often the network misbehaves; each a chance per message.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// A request, or its answer, is lost.
    pub lose: f64,
    /// A request is delivered a second time, later.
    pub duplicate: f64,
    /// A message takes `slow` longer (a retransmission).
    pub slow_chance: f64,
    pub slow: Duration,
    /// Every message takes a time in this range.
    pub delay: (Duration, Duration),
}

impl Faults {
    /// No fault: every message arrives within a millisecond.
    pub fn none() -> Faults {
        Faults {
            lose: 0.0,
            duplicate: 0.0,
            slow_chance: 0.0,
            slow: Duration::ZERO,
            delay: (Duration::from_micros(100), Duration::from_millis(1)),
        }
    }
}

/// What became of the messages so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub slowed: u64,
    /// Refused because an end was isolated or stopped.
    pub cut: u64,
}

#[derive(Debug)]
struct State {
    seed: u64,
    /// Messages sent so far on each link, from and to.
    sent: HashMap<(NodeId, NodeId), u64>,
    faults: Faults,
    nodes: HashMap<NodeId, (Handler, Unflushed)>,
    isolated: BTreeSet<NodeId>,
    counts: Counts,
}

/// The simulated network; cheap to clone.
#[derive(Debug, Clone)]
pub struct SimNet(Arc<Mutex<State>>);

/// The fate of one request, drawn when it is sent.
#[derive(Debug, Clone, Copy)]
struct Plan {
    there: Duration,
    back: Duration,
    lose_request: bool,
    lose_answer: bool,
    again: Option<Duration>,
}

impl SimNet {
    pub fn new(seed: u64, faults: Faults) -> SimNet {
        SimNet(Arc::new(Mutex::new(State {
            seed,
            sent: HashMap::new(),
            faults,
            nodes: HashMap::new(),
            isolated: BTreeSet::new(),
            counts: Counts::default(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.state().isolated.insert(id);
    }

    /// Ends every isolation.
    pub fn heal(&self) {
        self.state().isolated.clear();
    }

    pub fn counts(&self) -> Counts {
        self.state().counts
    }

    /// Keeps tokio's paused clock from moving while any node has a write
    /// on its way to disk, and lets it move by a millisecond at most at a
    /// time otherwise. Runs until the runtime stops; spawn it once.
    pub async fn hold_clock(self) {
        loop {
            let unflushed: Vec<Unflushed> = self
                .state()
                .nodes
                .values()
                .map(|(_, u)| Arc::clone(u))
                .collect();
            // A blocking task keeps the paused clock from advancing.
            let _ = tokio::task::spawn_blocking(move || {
                let give_up = std::time::Instant::now() + Duration::from_secs(5);
                while unflushed.iter().any(|u| !lock(u).is_empty())
                    && std::time::Instant::now() < give_up
                {
                    std::thread::sleep(Duration::from_micros(20));
                }
            })
            .await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub(crate) fn endpoint(&self, id: NodeId, addr: SocketAddr) -> Endpoint {
        Endpoint {
            net: self.clone(),
            id,
            addr,
        }
    }

    /// The fate of the next message from `from` to `to`: drawn from the
    /// seed, the link and the message's number on it, so that how the
    /// nodes' tasks interleave does not change it.
    fn plan(&self, from: NodeId, to: NodeId) -> Plan {
        let mut state = self.state();
        let State {
            seed,
            sent,
            faults,
            counts,
            ..
        } = &mut *state;
        counts.sent += 1;
        let n = sent.entry((from, to)).or_insert(0);
        *n += 1;
        let mut link = SplitMix::new(*seed ^ (from << 48) ^ (to << 40));
        let rng = &mut SplitMix::new(link.next_u64() ^ *n);
        let delay = |rng: &mut SplitMix, counts: &mut Counts| {
            let (low, high) = faults.delay;
            let mut d = low + (high.saturating_sub(low)).mul_f64(rng.unit());
            if rng.chance(faults.slow_chance) {
                counts.slowed += 1;
                d += faults.slow.mul_f64(rng.unit());
            }
            d
        };
        let there = delay(rng, counts);
        let back = delay(rng, counts);
        let lose_request = rng.chance(faults.lose);
        let lose_answer = rng.chance(faults.lose);
        let again = rng.chance(faults.duplicate).then(|| delay(rng, counts) * 4);
        counts.lost += u64::from(lose_request || lose_answer);
        counts.duplicated += u64::from(again.is_some());
        Plan {
            there,
            back,
            lose_request,
            lose_answer,
            again,
        }
    }

    /// The target's handler, if a message from `from` reaches it now.
    fn reach(&self, from: NodeId, to: NodeId) -> Option<Handler> {
        let mut state = self.state();
        let open = !state.isolated.contains(&from) && !state.isolated.contains(&to);
        let target = state.nodes.get(&to).map(|(h, _)| Arc::clone(h));
        let reached = target.filter(|_| open);
        state.counts.cut += u64::from(reached.is_none());
        reached
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One node's place on a [`SimNet`].
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    net: SimNet,
    id: NodeId,
    addr: SocketAddr,
}

type RpcResult<T> = Result<T, RPCError<lode_replication_wire::TypeConfig>>;

impl Endpoint {
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes this node reachable, answering with `handler`.
    pub(crate) fn serve(&self, handler: Handler, unflushed: Unflushed) {
        self.net.state().nodes.insert(self.id, (handler, unflushed));
    }

    /// Takes this node off the network: messages to it are lost.
    pub(crate) fn close(&self) {
        self.net.state().nodes.remove(&self.id);
    }

    /// Sends `request` to `target` and waits, `ttl` at most, for its
    /// answer.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        request: &Request,
        ttl: Duration,
    ) -> RpcResult<Response> {
        let bytes = wire::encode_request(1, request);
        let raft_message = !matches!(
            request,
            Request::Forward(_) | Request::ReadIndex | Request::ForwardSetting { .. }
        );
        let plan = self.net.plan(self.id, target);
        let (net, from) = (self.net.clone(), self.id);
        let exchange = async move {
            tokio::time::sleep(plan.there).await;
            let Some(handler) = net.reach(from, target).filter(|_| !plan.lose_request) else {
                return std::future::pending().await;
            };
            // Raft's own messages may come twice (a delayed copy, as a
            // retry after a timeout makes); a forwarded write travels on
            // a reliable stream, sent once, as over QUIC.
            if let Some(again) = plan.again.filter(|_| raft_message) {
                let (handler, bytes) = (Arc::clone(&handler), bytes.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(again).await;
                    answer(&handler, &bytes, from).await
                });
            }
            // Answered in a task of its own, as a real peer would go on
            // with a request its caller gave up on.
            let reply = tokio::spawn(async move { answer(&handler, &bytes, from).await })
                .await
                .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
            tokio::time::sleep(plan.back).await;
            if plan.lose_answer || net.reach(target, from).is_none() {
                return std::future::pending().await;
            }
            wire::decode_response(&reply)
                .map(|(_, r)| r)
                .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
        };
        tokio::time::timeout(ttl, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(RPCError::Unreachable(Unreachable::from_string(format!(
                    "node {target} did not answer within {ttl:?}"
                ))))
            })
    }
}

/// A request's bytes answered as the peer endpoint answers them.
async fn answer(handler: &Handler, bytes: &[u8], from: NodeId) -> Vec<u8> {
    let sender = Sender::Known(from);
    match wire::decode_request(bytes) {
        Ok((id, request)) => wire::encode_response(id, &handler.answer(request, &sender).await),
        Err(e) => wire::encode_response(0, &Response::Error(e.to_string())),
    }
}
