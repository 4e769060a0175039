//! Raft messages between nodes over QUIC with mutual TLS.
//!
//! One connection per pair of nodes; on it, each openraft client (the
//! replication stream to a follower, the heartbeat and vote client, the
//! snapshot client) has its own long-lived bidirectional stream, so a
//! large append never holds up a heartbeat or a vote. On a stream,
//! requests and responses are [`wire`] messages, one answered before the
//! next is sent. Any failure drops the stream (and, when the connection
//! is gone, the connection); the next call dials again. The seeded
//! tests put the simulated network of [`crate::sim`] in QUIC's place.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};

use crate::guard;
use crate::sim;
use crate::snapshot::{Pacer, Transfers};
use crate::store::SegmentList;
use crate::tls::{self, NodeTls, TlsError};
use lode_engine::SegmentMeta;
use lode_replication_wire::wire::{self, Request, Response};
use lode_replication_wire::{Node, NodeId, TypeConfig, Vote};

/// How long dialling a peer may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The least time an append may take. openraft gives appends the
/// heartbeat interval (100 ms), which a follower writing and syncing a
/// batch of megabytes on a busy machine can exceed; a timed-out append is
/// sent again, so too short a bound turns load into retries. A follower
/// that is gone fails at once (its connection closes); one that hangs
/// holds only its own replication stream this long.
const MIN_APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Payload bytes one append message carries at most (a single larger
/// entry goes alone): well inside the receiver's limit of
/// `wire::MAX_MESSAGE` (80 MiB), which 64 entries of client batches or
/// merged ones can exceed. Over it, a follower refused every try and
/// never caught up.
const APPEND_BYTES: usize = 32 << 20;

/// How many of `entries`, from the first, fit one append message.
fn entries_that_fit(entries: &[lode_replication_wire::Entry]) -> usize {
    let mut bytes = 0;
    let fit = entries
        .iter()
        .take_while(|e| {
            bytes += match &e.payload {
                openraft::EntryPayload::Normal(batch) => batch.0.frame_len(),
                _ => 64,
            };
            bytes <= APPEND_BYTES
        })
        .count();
    fit.max(1).min(entries.len())
}

type RpcResult<T> = Result<T, RPCError<TypeConfig>>;

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

fn network(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(e.to_string()))
}

/// A boxed future that may cross threads.
pub(crate) type BoxFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What answers the requests a node's peer endpoint receives (the node's
/// replica): the network and the simulation carry messages and know
/// nothing of what answers them.
pub(crate) trait PeerHandler: Send + Sync + std::fmt::Debug {
    /// `request`'s answer; `sender` is the peer it came from.
    fn answer<'a>(&'a self, request: Request, sender: &'a Sender) -> BoxFuture<'a, Response>;
}

/// A node's handler of its peers' requests, shared by every connection.
pub(crate) type Handler = Arc<dyn PeerHandler>;

/// How a node reaches its peers: QUIC, or the simulated network of the
/// seeded tests. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Network {
    Quic(Quic),
    Sim(sim::Endpoint),
}

impl Network {
    /// Binds the node's peer endpoint on `addr` with its TLS identity.
    pub(crate) fn bind(addr: SocketAddr, tls: &NodeTls) -> Result<Network, TlsError> {
        Quic::bind(addr, tls).map(Network::Quic)
    }

    /// The address the endpoint listens on.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Network::Quic(quic) => quic.local_addr(),
            Network::Sim(sim) => Ok(sim.addr()),
        }
    }

    /// Serves peers' requests with `handler` until the endpoint closes
    /// (on the simulated network, from now until `close`).
    pub(crate) async fn serve(self, handler: Handler, unflushed: crate::store::Unflushed) {
        match self {
            Network::Quic(quic) => quic.serve(handler).await,
            Network::Sim(sim) => sim.serve(handler, unflushed),
        }
    }

    /// Sends one request to `target` and waits for the answer.
    pub(crate) async fn request(
        &self,
        target: NodeId,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> RpcResult<Response> {
        match self {
            Network::Quic(quic) => quic.request(target, addr, request, ttl).await,
            Network::Sim(sim) => sim.call(target, request, ttl).await,
        }
    }

    /// Forgets any cached connection to `target`.
    pub(crate) fn forget_node(&self, target: NodeId) {
        if let Network::Quic(quic) = self {
            quic.forget_node(target);
        }
    }

    /// Stops serving and drops every connection.
    pub(crate) async fn close(&self) {
        match self {
            Network::Quic(quic) => quic.close().await,
            Network::Sim(sim) => sim.close(),
        }
    }
}

/// The node's QUIC endpoint, its TLS and its open connections; cheap to
/// clone. The endpoint sits in a slot that `close` empties: openraft's
/// clients may outlive the node briefly, and a quinn endpoint keeps its
/// UDP port while any handle to it lives.
#[derive(Debug, Clone)]
pub(crate) struct Quic {
    endpoint: Arc<Mutex<Option<quinn::Endpoint>>>,
    client: quinn::ClientConfig,
    conns: Arc<Mutex<HashMap<NodeId, quinn::Connection>>>,
}

impl Quic {
    fn bind(addr: SocketAddr, tls: &NodeTls) -> Result<Quic, TlsError> {
        let server = tls.server_config()?;
        let client = tls.client_config()?;
        let endpoint = lode_client::quic_endpoint(addr, Some(server)).map_err(|e| TlsError {
            path: std::path::PathBuf::from(addr.to_string()),
            reason: format!("bind the peer endpoint: {e}"),
        })?;
        Ok(Quic {
            endpoint: Arc::new(Mutex::new(Some(endpoint))),
            client,
            conns: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint()
            .ok_or_else(|| std::io::Error::other("the node stopped"))?
            .local_addr()
    }

    async fn serve(self, handler: Handler) {
        let Some(endpoint) = self.endpoint() else {
            return;
        };
        while let Some(incoming) = endpoint.accept().await {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => serve_connection(conn, handler).await,
                    Err(e) => tracing::debug!(error = %e, "peer handshake failed"),
                }
            });
        }
    }

    /// Sends one request to `target` on a stream of its own and waits for
    /// the answer (a forwarded write: many may be in flight at once).
    async fn request(
        &self,
        target: NodeId,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> RpcResult<Response> {
        let conn = self.connection(target, addr).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(unreachable)?;
            send.write_all(&wire::encode_request(1, request))
                .await
                .map_err(network)?;
            let _ = send.finish();
            let reply = read_message(&mut recv)
                .await
                .map_err(network)?
                .ok_or_else(|| network(format!("node {target} closed the stream")))?;
            wire::decode_response(&reply)
                .map(|(_, r)| r)
                .map_err(network)
        };
        let outcome = tokio::time::timeout(ttl, exchange)
            .await
            .map_err(|_| unreachable(format!("node {target} did not answer within {ttl:?}")))
            .and_then(|answered| answered);
        if outcome.is_err() {
            self.forget(target, &conn);
        }
        outcome
    }

    /// Drops the cached connection to `target`, whichever it is.
    fn forget_node(&self, target: NodeId) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&target);
    }

    /// Drops the cached connection to `target` if it is `conn`: a peer
    /// that failed to answer on it may have restarted, and its new process
    /// knows nothing of the old connection, which would otherwise be used
    /// until it idles out. The next request dials afresh.
    fn forget(&self, target: NodeId, conn: &quinn::Connection) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns
            .get(&target)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&target);
        }
    }

    /// Closes the endpoint and every connection, and waits (a moment at
    /// most) until the peers were told.
    async fn close(&self) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"node stopped");
            let started = std::time::Instant::now();
            let idle = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
            tracing::debug!(idle = idle.is_ok(), waited = ?started.elapsed(), "peer endpoint closed");
        }
    }

    async fn connection(&self, target: NodeId, addr: &str) -> RpcResult<quinn::Connection> {
        let existing = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(conn) = existing {
            return Ok(conn);
        }
        let sock: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(unreachable)?
            .next()
            .ok_or_else(|| unreachable(format!("{addr} resolves to no address")))?;
        let name = tls::node_name(target);
        let endpoint = self
            .endpoint()
            .ok_or_else(|| unreachable("this node stopped"))?;
        let connecting = endpoint
            .connect_with(self.client.clone(), sock, &name)
            .map_err(unreachable)?;
        drop(endpoint);
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(format!("dialling node {target} at {addr} timed out")))?
            .map_err(|e| unreachable(format!("dialling node {target} at {addr}: {e}")))?;
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, conn.clone());
        Ok(conn)
    }
}

/// Who sent a peer message: checked against the node id each message
/// claims before openraft sees it.
#[derive(Debug, Clone)]
pub(crate) enum Sender {
    /// The simulated network knows its sender.
    Known(NodeId),
    /// A QUIC peer, by the certificate its handshake verified under the
    /// cluster CA.
    Cert(Arc<PeerCert>),
}

/// A peer's certificate and the node id it was found valid for (a
/// certificate is valid for one node's name, `node-ID`).
#[derive(Debug)]
pub(crate) struct PeerCert {
    der: rustls::pki_types::CertificateDer<'static>,
    verified: Mutex<Option<NodeId>>,
}

impl Sender {
    /// The sender of messages on `conn`, from its verified certificate.
    fn of(conn: &quinn::Connection) -> Option<Sender> {
        let certs = conn
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        let der = certs.into_iter().next()?;
        Some(Sender::Cert(Arc::new(PeerCert {
            der,
            verified: Mutex::new(None),
        })))
    }

    /// Whether the sender is node `id`.
    pub(crate) fn is(&self, id: NodeId) -> bool {
        match self {
            Sender::Known(known) => *known == id,
            Sender::Cert(cert) => {
                let mut verified = cert.verified.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(known) = *verified {
                    return known == id;
                }
                let valid = tls::is_node_cert(&cert.der, id);
                if valid {
                    *verified = Some(id);
                }
                valid
            }
        }
    }
}

async fn serve_connection(conn: quinn::Connection, handler: Handler) {
    let Some(sender) = Sender::of(&conn) else {
        tracing::warn!("a peer connection without a certificate; closing it");
        conn.close(1u32.into(), b"no certificate");
        return;
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(
                    send,
                    recv,
                    Arc::clone(&handler),
                    sender.clone(),
                ));
            }
            Err(e) => {
                tracing::debug!(error = %e, "peer connection closed");
                return;
            }
        }
    }
}

/// Reads one framed message; `Ok(None)` at a clean end of the stream.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Vec<u8>>, String> {
    let mut head = [0u8; 4];
    match recv.read_exact(&mut head).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let total = wire::message_len(&head)
        .map_err(|e| e.to_string())?
        .unwrap_or(4);
    // Memory grows with the bytes that arrive, not with what the prefix
    // announces: a peer that announces 80 MiB and sends nothing holds
    // `MESSAGE_RESERVE` at most.
    let mut bytes = Vec::with_capacity(total.min(MESSAGE_RESERVE));
    bytes.extend_from_slice(&head);
    let rest = (total - 4) as u64;
    let read = tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(&mut *recv, rest),
        &mut bytes,
    )
    .await
    .map_err(|e| e.to_string())?;
    if read as u64 != rest {
        return Err(format!(
            "the stream ended {} bytes into a message of {total}",
            read + 4
        ));
    }
    Ok(Some(bytes))
}

/// Bytes of a peer message reserved before they arrive.
const MESSAGE_RESERVE: usize = 1 << 20;

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Handler,
    sender: Sender,
) {
    loop {
        let bytes = match read_message(&mut recv).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "peer stream ended");
                return;
            }
        };
        let (id, response) = match wire::decode_request(&bytes) {
            Ok((id, request)) => (id, handler.answer(request, &sender).await),
            Err(e) => {
                tracing::warn!(error = %e, "refusing a malformed peer message");
                let _ = send
                    .write_all(&wire::encode_response(0, &Response::Error(e.to_string())))
                    .await;
                return;
            }
        };
        if send
            .write_all(&wire::encode_response(id, &response))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Makes a [`PeerClient`] per openraft client; all share the node's
/// [`Network`].
#[derive(Debug, Clone)]
pub(crate) struct NetworkFactory {
    pub(crate) network: Network,
    /// The files a snapshot sends, and the counts of what was sent.
    pub(crate) transfers: Arc<Transfers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient {
            network: self.network.clone(),
            target,
            addr: node.addr.clone(),
            stream: None,
            next_id: 1,
            busy: false,
            priority: 0,
            transfers: Arc::clone(&self.transfers),
        }
    }
}

/// One openraft client of one peer: its own stream on the connection.
#[derive(Debug)]
pub(crate) struct PeerClient {
    network: Network,
    target: NodeId,
    addr: String,
    /// The stream and the connection it is on.
    stream: Option<(quinn::SendStream, quinn::RecvStream, quinn::Connection)>,
    next_id: u64,
    /// A call is under way on the stream. Still set when the next call
    /// starts, the last one was dropped by its caller before its answer
    /// (openraft times heartbeats out so): that answer may still come, so
    /// the stream is given up.
    busy: bool,
    /// QUIC send priority of the stream (higher goes first): a snapshot's
    /// stream yields to appends and heartbeats.
    priority: i32,
    transfers: Arc<Transfers>,
}

impl PeerClient {
    async fn call(&mut self, request: &Request, ttl: Duration) -> RpcResult<Response> {
        let response = match self.network.clone() {
            Network::Sim(sim) => sim.call(self.target, request, ttl).await?,
            Network::Quic(quic) => self.call_on_stream(&quic, request, ttl).await?,
        };
        match response {
            Response::Error(reason) => Err(network(format!("node {}: {reason}", self.target))),
            other => Ok(other),
        }
    }

    async fn call_on_stream(
        &mut self,
        quic: &Quic,
        request: &Request,
        ttl: Duration,
    ) -> RpcResult<Response> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = wire::encode_request(id, request);
        if std::mem::replace(&mut self.busy, true) {
            self.stream = None;
        }
        let outcome = tokio::time::timeout(ttl, self.exchange(quic, &bytes)).await;
        self.busy = false;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(unreachable(format!(
                "node {} did not answer within {ttl:?}",
                self.target
            ))),
        };
        match outcome {
            Ok((got, response)) if got == id => Ok(response),
            Ok((got, _)) => {
                self.stream = None;
                Err(network(format!(
                    "node {} answered request {got}, not {id}",
                    self.target
                )))
            }
            Err(e) => {
                // The stream's state is unknown: the next call opens
                // another, on a new connection (the peer may have restarted).
                if let Some((_, _, conn)) = self.stream.take() {
                    quic.forget(self.target, &conn);
                }
                Err(e)
            }
        }
    }

    async fn exchange(&mut self, quic: &Quic, bytes: &[u8]) -> RpcResult<(u64, Response)> {
        if self.stream.is_none() {
            let conn = quic.connection(self.target, &self.addr).await?;
            let (send, recv) = conn.open_bi().await.map_err(unreachable)?;
            let _ = send.set_priority(self.priority);
            self.stream = Some((send, recv, conn));
        }
        let Some((send, recv, _)) = self.stream.as_mut() else {
            return Err(unreachable("no stream"));
        };
        send.write_all(bytes).await.map_err(network)?;
        let reply = read_message(recv)
            .await
            .map_err(network)?
            .ok_or_else(|| network(format!("node {} closed the stream", self.target)))?;
        wire::decode_response(&reply).map_err(network)
    }
}

impl PeerClient {
    /// A vote or pre-vote request; both are answered with a vote response.
    async fn ask_vote(
        &mut self,
        request: Request,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        let asked = match &request {
            Request::Vote(v) | Request::PreVote(v) => v.vote.leader_id.term,
            _ => 0,
        };
        match self.call(&request, option.soft_ttl()).await? {
            Response::Vote(r) => match guard::check_vote_response(&r, asked) {
                Ok(()) => Ok(r),
                Err(refusal) => Err(network(format!("node {}: {refusal}", self.target))),
            },
            other => Err(unexpected(self.target, &other)),
        }
    }
}

fn unexpected(target: NodeId, response: &Response) -> RPCError<TypeConfig> {
    network(format!("node {target} answered with {response:?}"))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SegmentList;

    /// Sends as many of the entries as fit [`APPEND_BYTES`] (at least
    /// one); when some stay behind, a success is reported as partial, up
    /// to the last entry sent, and openraft sends the rest next.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<TypeConfig>> {
        let ttl = option.soft_ttl().max(MIN_APPEND_TIMEOUT);
        let fit = entries_that_fit(&rpc.entries);
        let cut = fit < rpc.entries.len();
        rpc.entries.truncate(fit);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let sent = guard::Sent::of(&rpc);
        match self.call(&Request::Append(rpc), ttl).await? {
            Response::Append(r) => {
                // An answer openraft would fail on (a conflict before the
                // log's start, a partial success past what was sent) is
                // a network error here: the append is sent again.
                if let Err(refusal) = guard::check_append_response(&sent, &r) {
                    return Err(network(format!("node {}: {refusal}", self.target)));
                }
                match r {
                    AppendEntriesResponse::Success if cut => {
                        Ok(AppendEntriesResponse::PartialSuccess(last_sent))
                    }
                    r => Ok(r),
                }
            }
            other => Err(unexpected(self.target, &other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.ask_vote(Request::Vote(rpc), option).await
    }

    /// Asks the peer whether it would grant the vote, without it changing
    /// its term (openraft's default grants every pre-vote unasked).
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<TypeConfig>> {
        self.ask_vote(Request::PreVote(rpc), option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<TransferLeaderResponse<TypeConfig>> {
        match self
            .call(&Request::TransferLeader(req), option.hard_ttl())
            .await?
        {
            Response::TransferLeader(Ok(())) => Ok(Ok(())),
            Response::TransferLeader(Err(reason)) => Err(network(format!(
                "node {} refused the transfer: {reason}",
                self.target
            ))),
            other => Err(unexpected(self.target, &other)),
        }
    }

    /// Offers the snapshot's segment list, sends the files the follower
    /// lacks from where each resumes, then asks it to install.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SegmentList>,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if self.priority != SNAPSHOT_PRIORITY {
            self.priority = SNAPSHOT_PRIORITY;
            self.stream = None;
        }
        let target = self.target;
        let outcome = tokio::select! {
            sent = self.send_snapshot(vote, snapshot) => sent,
            closed = cancel => Err(StreamingError::Closed(closed)),
        };
        self.transfers.ended(target, outcome.is_ok());
        outcome
    }
}

/// A snapshot stream's QUIC priority, below the default 0 of every other.
const SNAPSHOT_PRIORITY: i32 = -1;
/// How long one chunk (its write and fsync on the follower) may take.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an offer (the follower compares lists and checks what it
/// has staged) may take: a follower that does not answer is tried again
/// sooner than a chunk's fsync allows.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// A chunk refused this many times in a row ends the transfer.
const CHUNK_TRIES: u32 = 8;

fn streaming(e: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match e {
        RPCError::Unreachable(e) => StreamingError::Unreachable(e),
        RPCError::Timeout(e) => StreamingError::Timeout(e),
        other => StreamingError::Network(NetworkError::from_string(other.to_string())),
    }
}

impl PeerClient {
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SegmentList>,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let list = snapshot.snapshot;
        let offer = Request::SnapshotOffer(list.clone());
        let needed = match self.call(&offer, OFFER_TIMEOUT).await.map_err(streaming)? {
            Response::SnapshotNeed(needed) => needed,
            other => return Err(streaming(unexpected(self.target, &other))),
        };
        let files: Vec<(SegmentMeta, u64)> = needed
            .iter()
            .filter_map(|n| {
                list.segments
                    .iter()
                    .find(|s| (s.first_seq, s.sst_crc32c) == (n.first_seq, n.sst_crc32c))
                    .map(|s| (s.clone(), n.from.min(s.sst_bytes)))
            })
            .collect();
        let bytes = files.iter().map(|(s, from)| s.sst_bytes - from).sum();
        self.transfers
            .sending(self.target, files.len() as u64, bytes);
        tracing::info!(
            target = self.target,
            files = files.len(),
            bytes,
            "sending a snapshot's missing segments"
        );
        if files.iter().any(|(_, from)| *from > 0) {
            self.transfers.resumed();
        }
        let mut pacer = Pacer::new(self.transfers.bytes_per_sec);
        for (segment, from) in files {
            self.send_file(&segment, from, &mut pacer).await?;
        }
        let meta = wire::SnapshotState {
            last_log_id: snapshot.meta.last_log_id,
            membership_log_id: *snapshot.meta.last_membership.log_id(),
            membership: snapshot.meta.last_membership.membership().clone(),
        };
        let install = Request::SnapshotInstall {
            vote,
            meta,
            data: list,
        };
        // Installing ingests the files and syncs the manifest.
        match self
            .call(&install, CHUNK_TIMEOUT)
            .await
            .map_err(streaming)?
        {
            Response::Installed(vote) => Ok(SnapshotResponse::new(vote)),
            other => Err(streaming(unexpected(self.target, &other))),
        }
    }

    /// Sends `segment`'s file from `offset` in chunks; a refused chunk is
    /// sent again from where the follower says its file is staged.
    async fn send_file(
        &mut self,
        segment: &SegmentMeta,
        mut offset: u64,
        pacer: &mut Pacer,
    ) -> Result<(), StreamingError<TypeConfig>> {
        let mut refused = 0;
        while offset < segment.sst_bytes {
            let transfers = Arc::clone(&self.transfers);
            let wanted = segment.clone();
            let chunk = tokio::task::spawn_blocking(move || transfers.read_chunk(&wanted, offset))
                .await
                .map_err(|e| streaming(network(e)))?
                .map_err(|e| StreamingError::Closed(ReplicationClosed::new(e.to_string())))?;
            let len = chunk.bytes.len() as u64;
            pacer.pace(len).await;
            let request = Request::SnapshotChunk(chunk);
            self.transfers.sending_chunk(len);
            match self
                .call(&request, CHUNK_TIMEOUT)
                .await
                .map_err(streaming)?
            {
                Response::ChunkStaged(staged) => {
                    self.transfers
                        .sent(self.target, len, staged == segment.sst_bytes);
                    offset = staged;
                    refused = 0;
                }
                Response::ChunkRefused { staged, reason } => {
                    refused += 1;
                    self.transfers.retried(len);
                    tracing::warn!(target = self.target, offset, %reason, "chunk refused; sending again");
                    if refused >= CHUNK_TRIES {
                        return Err(streaming(network(format!(
                            "node {} refused {refused} chunks in a row: {reason}",
                            self.target
                        ))));
                    }
                    offset = staged;
                }
                other => return Err(streaming(unexpected(self.target, &other))),
            }
        }
        Ok(())
    }
}
