//! Byte formats of replication: the messages between nodes, a membership
//! entry's payload, and the log's state file. Pure functions over bytes:
//! no I/O, no clock. Decoders never trust their input: every failure is a
//! [`WireError`] naming what and where, never a panic.
//!
//! All integers are fixed-width little endian.
//!
//! ```text
//! message   len u32 | version u8 (3) | tag u8 | id u64 | body     (len counts from version on)
//! log id    term u64 | index u64
//! opt X     0 u8 | 1 u8 X
//! vote      term u64 | voted_for u64 | committed u8
//! entry     kind u8 (1 batch, 2 blank, 3 membership, 4 keyed batch, 5 retention, 6 setting) | term u64 | index u64 | len u32 | payload
//!           (a setting's payload: name str | opt value str)
//!           (a batch's payload is the WAL frame payload, byte for byte; a keyed batch's ends with its key)
//! membership configs u32 | { voters u32 | id u64 ... } ... | nodes u32 | { id u64 | addr str } ...
//! str       len u32 | utf-8 bytes
//! ```
//!
//! Message bodies by tag: 1 vote request, 2 pre-vote request (both: vote |
//! opt log id | leadership_transfer u8), 3 append request (vote | opt prev
//! log id | opt leader commit | count u32 | entries), 4 transfer-leader
//! request (vote | to u64 | opt log id), 5 forward (a client's batch for
//! the leader to write: payload str-framed bytes), 6 keyed forward (the
//! same, a keyed batch's payload), 7 read index (no body), 11 forward
//! setting (a setting entry's payload, str-framed); 65 vote response (vote | granted
//! u8 | opt log id), 66 append response (0 success, 1 partial + opt log id,
//! 2 conflict, 3 higher vote + vote), 67 transfer-leader response (0 ok, 1
//! refused + str), 68 written (first seq u64 | end seq u64), 69 not leader
//! (opt leader id: 0 u8, or 1 u8 then id u64 and address str), 70 read
//! index (index u64), 127 error (str).
//!
//! Snapshot transfer (a snapshot is a list of sealed segments, each a
//! manifest entry, `lode_codec::SegmentMeta::encode`'s bytes, str-framed):
//! 8 offer (segment list), 9 chunk (segment | offset u64 | crc32c u32 |
//! bytes str), 10 install (vote | snapshot meta | segment list); 71 need
//! (count u32 | { first seq u64 | sst crc u32 | from u64 }: the segments
//! the follower lacks and where each resumes), 72 chunk staged (bytes
//! staged u64), 73 chunk refused (bytes staged u64 | reason str), 74
//! installed (vote), 75 no space (a forward refused: count u32 | { node
//! id u64 }, the members whose no-space alarm is raised).
//!
//! ```text
//! segment list  count u32 | segment ... | floor u64 | end seq u64 | opt settings
//!               | keyed count u32 | keyed entry (40 bytes: index, producer,
//!               sequence, first seq, seq after; u64 LE each) ...   (since version 3)
//! settings      count u32 | { name str | value str } ...   (the engine's settings: a server's tokens)
//! snapshot meta opt last log id | opt membership log id | membership
//! ```

use std::collections::{BTreeMap, BTreeSet};

use lode_codec::{EncodedBatch, FrameKind, KeyedEntry, SegmentMeta};
use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest, VoteResponse,
};
use openraft::{EntryPayload, LogId as RaftLogId};

use crate::types::{Batch, Entry, LogId, Membership, Node, NodeId, TypeConfig, Vote};

/// Version of the message format; a peer speaking another is refused.
pub const VERSION: u8 = 3;
/// Largest message accepted: a batch of entries up to the engine's batch
/// limit, with room for framing.
pub const MAX_MESSAGE: usize = 80 << 20;

/// Why bytes are not a valid message or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("truncated at byte {at}: {needed} more bytes needed for {what}")]
    Truncated {
        what: &'static str,
        at: usize,
        needed: usize,
    },
    #[error("invalid {what} at byte {at}: {reason}")]
    Invalid {
        what: &'static str,
        at: usize,
        reason: String,
    },
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported message version {0} (this node speaks {VERSION})")]
    Version(u8),
}

type Result<T> = std::result::Result<T, WireError>;

/// A request from one node to another.
#[derive(Debug)]
pub enum Request {
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Append(AppendEntriesRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A batch a follower took in, for the leader to write.
    Forward(EncodedBatch),
    /// A follower's linearizable read asks the leader for the index to
    /// apply through first.
    ReadIndex,
    /// A setting a follower was asked to make (a token created or
    /// revoked), for the leader to write: answered `Written` once applied.
    ForwardSetting {
        name: String,
        value: Option<Vec<u8>>,
    },
    /// The leader offers a snapshot: the follower answers what it lacks.
    SnapshotOffer(SegmentList),
    /// A piece of a segment's file for the follower to stage.
    SnapshotChunk(Chunk),
    /// Every file is staged: install the snapshot.
    SnapshotInstall {
        vote: Vote,
        meta: SnapshotState,
        data: SegmentList,
    },
}

/// A snapshot's data: the sealed segments it stands for (their files and
/// checksums are in each entry), the first seq it keeps and the seq after
/// its records. Taking one copies nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentList {
    pub segments: Vec<SegmentMeta>,
    pub floor: u64,
    pub end_seq: u64,
    /// The engine's settings (a server's tokens) as of the snapshot;
    /// `None` for a snapshot described before they were carried.
    pub settings: Option<Settings>,
    /// Where the keyed batches of its segments landed, as far as the
    /// sender remembers (the newest within its key window): a retry of one
    /// is answered with its seqs on the node that installs it.
    pub keys: Vec<KeyedEntry>,
}

/// The engine's settings, by name (`lode_engine::Settings`).
pub type Settings = BTreeMap<String, Vec<u8>>;

/// A segment a follower lacks, and where its transfer resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    pub first_seq: u64,
    pub sst_crc32c: u32,
    pub from: u64,
}

/// Bytes of a segment's file from `offset`, with their crc32c.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub segment: SegmentMeta,
    pub offset: u64,
    pub crc32c: u32,
    pub bytes: Vec<u8>,
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Response {
    Vote(VoteResponse<TypeConfig>),
    Append(AppendEntriesResponse<TypeConfig>),
    /// `Err` carries the reason the transfer was refused.
    TransferLeader(std::result::Result<(), String>),
    /// A forwarded batch was committed with these seqs.
    Written {
        start: u64,
        end: u64,
    },
    /// The peer does not lead; the leader it knows of, if any.
    NotLeader(Option<(NodeId, String)>),
    /// The leader confirmed its leadership with a quorum: a read that
    /// follows every write acknowledged so far applies through this index.
    ReadIndex(u64),
    /// The segments of an offered snapshot the follower lacks.
    SnapshotNeed(Vec<Needed>),
    /// A chunk was staged: the file's bytes staged so far.
    ChunkStaged(u64),
    /// A chunk was refused (it failed its checksum, or did not start
    /// where the staged bytes end): send from `staged`.
    ChunkRefused {
        staged: u64,
        reason: String,
    },
    /// The snapshot is installed; the follower's vote.
    Installed(Vote),
    /// A forwarded batch was refused: these members' disks are below
    /// their free-space floor (their no-space alarm is raised).
    NoSpace(Vec<NodeId>),
    /// The peer could not serve the request (it is shutting down, say).
    Error(String),
}

// ---- encoding -------------------------------------------------------------

#[derive(Debug, Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn log_id(&mut self, id: &LogId) {
        self.u64(id.leader_id.term);
        self.u64(id.index);
    }
    fn opt_log_id(&mut self, id: Option<&LogId>) {
        match id {
            None => self.u8(0),
            Some(id) => {
                self.u8(1);
                self.log_id(id);
            }
        }
    }
    fn vote(&mut self, vote: &Vote) {
        self.u64(vote.leader_id.term);
        self.u64(vote.leader_id.voted_for);
        self.u8(u8::from(vote.committed));
    }
    fn membership(&mut self, m: &Membership) {
        let configs = m.get_joint_config();
        self.u32(configs.len() as u32);
        for config in configs {
            self.u32(config.len() as u32);
            for id in config {
                self.u64(*id);
            }
        }
        let nodes: Vec<_> = m.nodes().collect();
        self.u32(nodes.len() as u32);
        for (id, node) in nodes {
            self.u64(*id);
            self.bytes(node.addr.as_bytes());
        }
    }
    fn segment_list(&mut self, list: &SegmentList) {
        self.u32(list.segments.len() as u32);
        for segment in &list.segments {
            self.bytes(&segment.encode());
        }
        self.u64(list.floor);
        self.u64(list.end_seq);
        self.settings(list.settings.as_ref());
        self.u32(list.keys.len() as u32);
        for entry in &list.keys {
            self.0.extend_from_slice(&entry.encode());
        }
    }
    fn settings(&mut self, settings: Option<&Settings>) {
        match settings {
            None => self.u8(0),
            Some(settings) => {
                self.u8(1);
                self.u32(settings.len() as u32);
                for (name, value) in settings {
                    self.bytes(name.as_bytes());
                    self.bytes(value);
                }
            }
        }
    }
    fn snapshot_state(&mut self, s: &SnapshotState) {
        self.opt_log_id(s.last_log_id.as_ref());
        self.opt_log_id(s.membership_log_id.as_ref());
        self.membership(&s.membership);
    }
    fn entry(&mut self, entry: &Entry) {
        let kind = match &entry.payload {
            EntryPayload::Normal(batch) => batch.0.kind(),
            EntryPayload::Blank => FrameKind::Blank,
            EntryPayload::Membership(_) => FrameKind::Membership,
        };
        self.u8(kind as u8);
        self.log_id(&entry.log_id);
        match &entry.payload {
            // A batch's bytes go straight from the shared frame into the
            // message.
            EntryPayload::Normal(batch) => self.bytes(batch.0.payload()),
            EntryPayload::Blank => self.bytes(&[]),
            EntryPayload::Membership(m) => self.bytes(&encode_membership(m)),
        }
    }
}

/// The log id (term, index).
pub fn log_id(term: u64, index: u64) -> LogId {
    RaftLogId::new(
        openraft::vote::leader_id_std::CommittedLeaderId::new(term),
        index,
    )
}

/// A setting entry's payload: the name (str) and, to set it, its value
/// (opt str); without one the setting is removed.
pub fn encode_setting(name: &str, value: Option<&[u8]>) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(name.as_bytes());
    match value {
        None => w.u8(0),
        Some(value) => {
            w.u8(1);
            w.bytes(value);
        }
    }
    w.0
}

/// A setting entry's name and value, as [`encode_setting`] wrote them.
pub fn decode_setting(bytes: &[u8]) -> Result<(String, Option<Vec<u8>>)> {
    Reader::new(bytes).whole(|r| {
        let name = r.string("setting name")?;
        let value = if r.flag("setting value")? {
            Some(r.bytes("setting value")?.to_vec())
        } else {
            None
        };
        Ok((name, value))
    })
}

/// A membership entry's payload, as the WAL stores it.
pub fn encode_membership(m: &Membership) -> Vec<u8> {
    let mut w = Writer::default();
    w.membership(m);
    w.0
}

fn message(tag: u8, id: u64, body: impl FnOnce(&mut Writer)) -> Vec<u8> {
    let mut w = Writer(vec![0; 4]);
    w.u8(VERSION);
    w.u8(tag);
    w.u64(id);
    body(&mut w);
    let len = (w.0.len() - 4) as u32;
    if let Some(head) = w.0.get_mut(..4) {
        head.copy_from_slice(&len.to_le_bytes());
    }
    w.0
}

fn vote_request(w: &mut Writer, req: &VoteRequest<TypeConfig>) {
    w.vote(&req.vote);
    w.opt_log_id(req.last_log_id.as_ref());
    w.u8(u8::from(req.leadership_transfer));
}

/// A request as sent, framed, with the caller's request id.
pub fn encode_request(id: u64, req: &Request) -> Vec<u8> {
    match req {
        Request::Vote(v) => message(1, id, |w| vote_request(w, v)),
        Request::PreVote(v) => message(2, id, |w| vote_request(w, v)),
        Request::Append(a) => message(3, id, |w| {
            // Room for every batch at once: no regrowth of a message of
            // megabytes.
            let payloads: usize = a
                .entries
                .iter()
                .map(|e| match &e.payload {
                    EntryPayload::Normal(batch) => batch.0.payload().len() + 21,
                    _ => 64,
                })
                .sum();
            w.0.reserve(payloads + 64);
            w.vote(&a.vote);
            w.opt_log_id(a.prev_log_id.as_ref());
            w.opt_log_id(a.leader_commit.as_ref());
            w.u32(a.entries.len() as u32);
            for entry in &a.entries {
                w.entry(entry);
            }
        }),
        Request::TransferLeader(t) => message(4, id, |w| {
            w.vote(t.from_leader());
            w.u64(*t.to_node_id());
            w.opt_log_id(t.last_log_id());
        }),
        Request::Forward(batch) => {
            let tag = if batch.key().is_some() { 6 } else { 5 };
            message(tag, id, |w| w.bytes(batch.payload()))
        }
        Request::ReadIndex => message(7, id, |_| {}),
        Request::ForwardSetting { name, value } => message(11, id, |w| {
            w.bytes(&encode_setting(name, value.as_deref()));
        }),
        Request::SnapshotOffer(list) => message(8, id, |w| w.segment_list(list)),
        Request::SnapshotChunk(chunk) => message(9, id, |w| {
            w.0.reserve(chunk.bytes.len() + 160);
            w.bytes(&chunk.segment.encode());
            w.u64(chunk.offset);
            w.u32(chunk.crc32c);
            w.bytes(&chunk.bytes);
        }),
        Request::SnapshotInstall { vote, meta, data } => message(10, id, |w| {
            w.vote(vote);
            w.snapshot_state(meta);
            w.segment_list(data);
        }),
    }
}

/// A response as sent, framed, with the id of the request it answers.
pub fn encode_response(id: u64, resp: &Response) -> Vec<u8> {
    match resp {
        Response::Vote(v) => message(65, id, |w| {
            w.vote(&v.vote);
            w.u8(u8::from(v.vote_granted));
            w.opt_log_id(v.last_log_id.as_ref());
        }),
        Response::Append(a) => message(66, id, |w| match a {
            AppendEntriesResponse::Success => w.u8(0),
            AppendEntriesResponse::PartialSuccess(upto) => {
                w.u8(1);
                w.opt_log_id(upto.as_ref());
            }
            AppendEntriesResponse::Conflict => w.u8(2),
            AppendEntriesResponse::HigherVote(vote) => {
                w.u8(3);
                w.vote(vote);
            }
        }),
        Response::TransferLeader(r) => message(67, id, |w| match r {
            Ok(()) => w.u8(0),
            Err(reason) => {
                w.u8(1);
                w.bytes(reason.as_bytes());
            }
        }),
        Response::Written { start, end } => message(68, id, |w| {
            w.u64(*start);
            w.u64(*end);
        }),
        Response::ReadIndex(index) => message(70, id, |w| w.u64(*index)),
        Response::NotLeader(leader) => message(69, id, |w| match leader {
            None => w.u8(0),
            Some((node, addr)) => {
                w.u8(1);
                w.u64(*node);
                w.bytes(addr.as_bytes());
            }
        }),
        Response::SnapshotNeed(needed) => message(71, id, |w| {
            w.u32(needed.len() as u32);
            for n in needed {
                w.u64(n.first_seq);
                w.u32(n.sst_crc32c);
                w.u64(n.from);
            }
        }),
        Response::ChunkStaged(staged) => message(72, id, |w| w.u64(*staged)),
        Response::ChunkRefused { staged, reason } => message(73, id, |w| {
            w.u64(*staged);
            w.bytes(reason.as_bytes());
        }),
        Response::Installed(vote) => message(74, id, |w| w.vote(vote)),
        Response::NoSpace(nodes) => message(75, id, |w| {
            w.u32(nodes.len() as u32);
            for node in nodes {
                w.u64(*node);
            }
        }),
        Response::Error(reason) => message(127, id, |w| w.bytes(reason.as_bytes())),
    }
}

// ---- decoding -------------------------------------------------------------

#[derive(Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n);
        match end.and_then(|end| self.bytes.get(self.at..end)) {
            Some(slice) => {
                self.at += n;
                Ok(slice)
            }
            None => Err(WireError::Truncated {
                what,
                at: self.at,
                needed: n.saturating_sub(self.bytes.len().saturating_sub(self.at)),
            }),
        }
    }
    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?.first().copied().unwrap_or(0))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        let raw = self.take(4, what)?;
        Ok(u32::from_le_bytes(raw.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let raw = self.take(8, what)?;
        Ok(u64::from_le_bytes(raw.try_into().unwrap_or([0; 8])))
    }
    fn flag(&mut self, what: &'static str) -> Result<bool> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid_at(at, what, format!("flag {other} is neither 0 nor 1"))),
        }
    }
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
    fn string(&mut self, what: &'static str) -> Result<String> {
        let at = self.at;
        let raw = self.bytes(what)?;
        String::from_utf8(raw.to_vec()).map_err(|e| self.invalid_at(at, what, e.to_string()))
    }
    /// A count of items each at least `min_item` bytes long, checked
    /// against what is left so a lying count cannot make us allocate.
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize> {
        let at = self.at;
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_item) > self.bytes.len().saturating_sub(self.at) {
            return Err(self.invalid_at(at, what, format!("count {n} exceeds the bytes left")));
        }
        Ok(n)
    }
    fn invalid_at(&self, at: usize, what: &'static str, reason: String) -> WireError {
        WireError::Invalid { what, at, reason }
    }
    fn log_id(&mut self) -> Result<LogId> {
        let term = self.u64("log id term")?;
        let index = self.u64("log id index")?;
        Ok(log_id(term, index))
    }
    fn opt_log_id(&mut self) -> Result<Option<LogId>> {
        if self.flag("optional log id")? {
            self.log_id().map(Some)
        } else {
            Ok(None)
        }
    }
    fn vote(&mut self) -> Result<Vote> {
        let term = self.u64("vote term")?;
        let node = self.u64("vote node")?;
        let committed = self.flag("vote committed")?;
        Ok(if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        })
    }
    fn membership(&mut self) -> Result<Membership> {
        let at = self.at;
        let n_configs = self.count("membership configs", 4)?;
        let mut configs = Vec::with_capacity(n_configs);
        for _ in 0..n_configs {
            let n = self.count("membership voters", 8)?;
            let mut voters = BTreeSet::new();
            for _ in 0..n {
                voters.insert(self.u64("voter id")?);
            }
            configs.push(voters);
        }
        let n_nodes = self.count("membership nodes", 12)?;
        let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
        for _ in 0..n_nodes {
            let id = self.u64("node id")?;
            let addr = self.string("node address")?;
            nodes.insert(id, Node { addr });
        }
        Membership::new(configs, nodes)
            .map_err(|e| self.invalid_at(at, "membership", e.to_string()))
    }
    fn entry(&mut self) -> Result<Entry> {
        let at = self.at;
        let kind = self.u8("entry kind")?;
        let log_id = self.log_id()?;
        let payload_at = self.at + 4;
        let payload = self.bytes("entry payload")?;
        let payload = match kind {
            1 | 4 => {
                let kind = FrameKind::from_byte(kind).unwrap_or(FrameKind::Batch);
                // The leader's log holds it, checked whole when its client
                // sent it; here its structure is checked, and its records
                // when read, as for a frame the log recovers.
                let batch = EncodedBatch::from_log(kind, payload)
                    .map_err(|e| self.invalid_at(payload_at, "batch entry", e.to_string()))?;
                EntryPayload::Normal(Batch::new(batch))
            }
            6 => {
                decode_setting(payload)
                    .map_err(|e| self.invalid_at(payload_at, "setting entry", e.to_string()))?;
                let batch = EncodedBatch::without_records(FrameKind::Setting, payload)
                    .map_err(|e| self.invalid_at(payload_at, "setting entry", e.to_string()))?;
                EntryPayload::Normal(Batch::new(batch))
            }
            5 => {
                let batch = EncodedBatch::from_log(FrameKind::Retain, payload)
                    .ok()
                    .filter(|b| b.retain_floor().is_some())
                    .ok_or_else(|| {
                        self.invalid_at(
                            payload_at,
                            "retention entry",
                            "not an 8-byte seq".to_owned(),
                        )
                    })?;
                EntryPayload::Normal(Batch::new(batch))
            }
            2 if payload.is_empty() => EntryPayload::Blank,
            3 => EntryPayload::Membership(
                Reader::new(payload)
                    .whole(Reader::membership)
                    .map_err(|e| self.invalid_at(payload_at, "membership entry", e.to_string()))?,
            ),
            _ => {
                return Err(self.invalid_at(
                    at,
                    "entry",
                    format!("kind {kind} with {} payload bytes", payload.len()),
                ));
            }
        };
        Ok(Entry::new(log_id, payload))
    }
    fn vote_request(&mut self) -> Result<VoteRequest<TypeConfig>> {
        let vote = self.vote()?;
        let last_log_id = self.opt_log_id()?;
        let mut req = VoteRequest::new(vote, last_log_id);
        req.leadership_transfer = self.flag("leadership transfer")?;
        Ok(req)
    }
    /// Runs `read` and checks that it used every byte.
    fn segment(&mut self) -> Result<SegmentMeta> {
        let at = self.at + 4;
        let bytes = self.bytes("segment")?;
        SegmentMeta::decode(bytes).map_err(|e| self.invalid_at(at, "segment", e))
    }
    fn segment_list(&mut self) -> Result<SegmentList> {
        let n = self.count("segments", 5)?;
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            segments.push(self.segment()?);
        }
        Ok(SegmentList {
            segments,
            floor: self.u64("floor")?,
            end_seq: self.u64("end seq")?,
            settings: self.settings()?,
            keys: self.keyed_entries()?,
        })
    }
    fn keyed_entries(&mut self) -> Result<Vec<KeyedEntry>> {
        let n = self.count("keyed batches", KeyedEntry::LEN)?;
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.at;
            let raw = self.take(KeyedEntry::LEN, "keyed batch")?;
            keys.push(KeyedEntry::decode(raw).ok_or_else(|| {
                self.invalid_at(at, "keyed batch", "seqs that end before they start".into())
            })?);
        }
        Ok(keys)
    }
    fn settings(&mut self) -> Result<Option<Settings>> {
        if !self.flag("settings")? {
            return Ok(None);
        }
        let n = self.count("settings", 8)?;
        let mut settings = Settings::new();
        for _ in 0..n {
            let name = self.string("setting name")?;
            let value = self.bytes("setting value")?.to_vec();
            settings.insert(name, value);
        }
        Ok(Some(settings))
    }
    fn snapshot_state(&mut self) -> Result<SnapshotState> {
        Ok(SnapshotState {
            last_log_id: self.opt_log_id()?,
            membership_log_id: self.opt_log_id()?,
            membership: self.membership()?,
        })
    }
    fn whole<T>(mut self, read: impl FnOnce(&mut Reader<'a>) -> Result<T>) -> Result<T> {
        let value = read(&mut self)?;
        if self.at != self.bytes.len() {
            return Err(self.invalid_at(
                self.at,
                "message",
                format!("{} bytes after the end", self.bytes.len() - self.at),
            ));
        }
        Ok(value)
    }
}

/// A membership entry's payload, as [`encode_membership`] made it.
pub fn decode_membership(bytes: &[u8]) -> Result<Membership> {
    Reader::new(bytes).whole(Reader::membership)
}

/// How many bytes the message at the start of `bytes` takes, once its
/// length prefix is there: `Ok(None)` while fewer than 4 bytes are in.
pub fn message_len(bytes: &[u8]) -> Result<Option<usize>> {
    let Some(head) = bytes.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(head.try_into().unwrap_or([0; 4])) as usize;
    if len > MAX_MESSAGE {
        return Err(WireError::TooLarge {
            len,
            max: MAX_MESSAGE,
        });
    }
    Ok(Some(4 + len))
}

/// Splits a whole framed message into (tag, id, body reader).
fn open(bytes: &[u8]) -> Result<(u8, u64, Reader<'_>)> {
    let total = message_len(bytes)?.ok_or(WireError::Truncated {
        what: "message length",
        at: 0,
        needed: 4usize.saturating_sub(bytes.len()),
    })?;
    if total != bytes.len() {
        return Err(WireError::Invalid {
            what: "message length",
            at: 0,
            reason: format!("says {total} bytes, {} given", bytes.len()),
        });
    }
    let mut r = Reader::new(bytes);
    r.at = 4;
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let tag = r.u8("message tag")?;
    let id = r.u64("request id")?;
    Ok((tag, id, r))
}

/// A whole framed request: its id and what it asks.
pub fn decode_request(bytes: &[u8]) -> Result<(u64, Request)> {
    let (tag, id, r) = open(bytes)?;
    let at = r.at;
    let req = match tag {
        1 => r.whole(|r| r.vote_request().map(Request::Vote))?,
        2 => r.whole(|r| r.vote_request().map(Request::PreVote))?,
        3 => r.whole(|r| {
            let vote = r.vote()?;
            let prev_log_id = r.opt_log_id()?;
            let leader_commit = r.opt_log_id()?;
            let n = r.count("entries", 21)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(r.entry()?);
            }
            Ok(Request::Append(AppendEntriesRequest {
                vote,
                prev_log_id,
                entries,
                leader_commit,
            }))
        })?,
        4 => r.whole(|r| {
            let vote = r.vote()?;
            let to = r.u64("transfer target")?;
            let last = r.opt_log_id()?;
            Ok(Request::TransferLeader(TransferLeaderRequest::new(
                vote, to, last,
            )))
        })?,
        5 | 6 => r.whole(|r| {
            let at = r.at + 4;
            let payload = r.bytes("forwarded batch")?;
            let kind = match tag {
                6 => FrameKind::KeyedBatch,
                _ => FrameKind::Batch,
            };
            let batch = EncodedBatch::from_kind(kind, payload)
                .map_err(|e| r.invalid_at(at, "forwarded batch", e.to_string()))?;
            Ok(Request::Forward(batch))
        })?,
        7 => r.whole(|_| Ok(Request::ReadIndex))?,
        11 => r.whole(|r| {
            let at = r.at + 4;
            let (name, value) = decode_setting(r.bytes("forwarded setting")?)
                .map_err(|e| r.invalid_at(at, "forwarded setting", e.to_string()))?;
            Ok(Request::ForwardSetting { name, value })
        })?,
        8 => r.whole(|r| r.segment_list().map(Request::SnapshotOffer))?,
        9 => r.whole(|r| {
            let segment = r.segment()?;
            let offset = r.u64("chunk offset")?;
            let crc32c = r.u32("chunk crc")?;
            let bytes = r.bytes("chunk")?.to_vec();
            Ok(Request::SnapshotChunk(Chunk {
                segment,
                offset,
                crc32c,
                bytes,
            }))
        })?,
        10 => r.whole(|r| {
            let vote = r.vote()?;
            let meta = r.snapshot_state()?;
            let data = r.segment_list()?;
            Ok(Request::SnapshotInstall { vote, meta, data })
        })?,
        other => {
            return Err(WireError::Invalid {
                what: "request tag",
                at: at - 9,
                reason: format!("unknown tag {other}"),
            });
        }
    };
    Ok((id, req))
}

/// A whole framed response: the id of the request it answers and what it
/// says.
pub fn decode_response(bytes: &[u8]) -> Result<(u64, Response)> {
    let (tag, id, r) = open(bytes)?;
    let at = r.at;
    let resp = match tag {
        65 => r.whole(|r| {
            let vote = r.vote()?;
            let granted = r.flag("vote granted")?;
            let last = r.opt_log_id()?;
            Ok(Response::Vote(VoteResponse::new(vote, last, granted)))
        })?,
        66 => r.whole(|r| {
            let at = r.at;
            Ok(Response::Append(match r.u8("append outcome")? {
                0 => AppendEntriesResponse::Success,
                1 => AppendEntriesResponse::PartialSuccess(r.opt_log_id()?),
                2 => AppendEntriesResponse::Conflict,
                3 => AppendEntriesResponse::HigherVote(r.vote()?),
                other => {
                    return Err(r.invalid_at(
                        at,
                        "append outcome",
                        format!("unknown outcome {other}"),
                    ));
                }
            }))
        })?,
        67 => r.whole(|r| {
            Ok(Response::TransferLeader(if r.flag("transfer refused")? {
                Err(r.string("transfer refusal")?)
            } else {
                Ok(())
            }))
        })?,
        68 => r.whole(|r| {
            let start = r.u64("first seq")?;
            let end = r.u64("end seq")?;
            Ok(Response::Written { start, end })
        })?,
        70 => r.whole(|r| Ok(Response::ReadIndex(r.u64("read index")?)))?,
        69 => r.whole(|r| {
            Ok(Response::NotLeader(if r.flag("leader known")? {
                Some((r.u64("leader id")?, r.string("leader address")?))
            } else {
                None
            }))
        })?,
        71 => r.whole(|r| {
            let n = r.count("needed segments", 20)?;
            let mut needed = Vec::with_capacity(n);
            for _ in 0..n {
                needed.push(Needed {
                    first_seq: r.u64("first seq")?,
                    sst_crc32c: r.u32("sst crc")?,
                    from: r.u64("resume offset")?,
                });
            }
            Ok(Response::SnapshotNeed(needed))
        })?,
        72 => r.whole(|r| Ok(Response::ChunkStaged(r.u64("bytes staged")?)))?,
        73 => r.whole(|r| {
            let staged = r.u64("bytes staged")?;
            let reason = r.string("refusal")?;
            Ok(Response::ChunkRefused { staged, reason })
        })?,
        74 => r.whole(|r| r.vote().map(Response::Installed))?,
        75 => r.whole(|r| {
            let n = r.count("alarmed nodes", 8)?;
            let mut nodes = Vec::with_capacity(n);
            for _ in 0..n {
                nodes.push(r.u64("alarmed node")?);
            }
            Ok(Response::NoSpace(nodes))
        })?,
        127 => r.whole(|r| r.string("error").map(Response::Error))?,
        other => {
            return Err(WireError::Invalid {
                what: "response tag",
                at: at - 9,
                reason: format!("unknown tag {other}"),
            });
        }
    };
    Ok((id, resp))
}

// ---- the log's state file ---------------------------------------------------

const STATE_MAGIC: &[u8; 8] = b"LODERAFT";
const STATE_VERSION: u32 = 1;

/// What the replicated log keeps beside its entries, in one file replaced
/// atomically: the vote, the committed log id, the last purged log id and
/// the last snapshot's metadata (its last log id and membership).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogState {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    pub snapshot: Option<SnapshotState>,
}

/// A snapshot's metadata as the state file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotState {
    pub last_log_id: Option<LogId>,
    pub membership_log_id: Option<LogId>,
    pub membership: Membership,
}

/// What a node stores of its last snapshot, with its segments (which its
/// manifest holds): the metadata, the first seq kept and the seq after
/// its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDescription {
    pub state: SnapshotState,
    pub floor: u64,
    pub end_seq: u64,
    /// The engine's settings when the snapshot was built; `None` in a
    /// description of version 1.
    pub settings: Option<Settings>,
}

const DESCRIPTION_VERSION: u8 = 2;

/// A snapshot description's bytes: version u8 (2), snapshot meta, floor
/// u64, end seq u64, opt settings (count u32 | { name str | value str }).
/// Version 1 had no settings.
pub fn encode_description(d: &SnapshotDescription) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(DESCRIPTION_VERSION);
    w.snapshot_state(&d.state);
    w.u64(d.floor);
    w.u64(d.end_seq);
    w.settings(d.settings.as_ref());
    w.0
}

/// A snapshot description as [`encode_description`] wrote it (or
/// version 1 did).
pub fn decode_description(bytes: &[u8]) -> Result<SnapshotDescription> {
    Reader::new(bytes).whole(|r| {
        let version = r.u8("description version")?;
        if !(1..=DESCRIPTION_VERSION).contains(&version) {
            return Err(r.invalid_at(
                0,
                "snapshot description",
                format!("unsupported version {version}"),
            ));
        }
        Ok(SnapshotDescription {
            state: r.snapshot_state()?,
            floor: r.u64("floor")?,
            end_seq: r.u64("end seq")?,
            settings: if version >= 2 { r.settings()? } else { None },
        })
    })
}

/// The state file's bytes: magic, version, crc32c of the body, body.
pub fn encode_state(state: &LogState) -> Vec<u8> {
    let mut body = Writer::default();
    match &state.vote {
        None => body.u8(0),
        Some(vote) => {
            body.u8(1);
            body.vote(vote);
        }
    }
    body.opt_log_id(state.committed.as_ref());
    body.opt_log_id(state.purged.as_ref());
    match &state.snapshot {
        None => body.u8(0),
        Some(s) => {
            body.u8(1);
            body.opt_log_id(s.last_log_id.as_ref());
            body.opt_log_id(s.membership_log_id.as_ref());
            body.membership(&s.membership);
        }
    }
    let mut out = Vec::with_capacity(16 + body.0.len());
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&STATE_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body.0).to_le_bytes());
    out.extend_from_slice(&body.0);
    out
}

/// The state file as [`encode_state`] wrote it.
pub fn decode_state(bytes: &[u8]) -> Result<LogState> {
    let mut r = Reader::new(bytes);
    if r.take(8, "state magic")? != STATE_MAGIC {
        return Err(r.invalid_at(
            0,
            "state file",
            "not a lode Raft state file (bad magic)".into(),
        ));
    }
    let version = r.u32("state version")?;
    if version != STATE_VERSION {
        return Err(r.invalid_at(8, "state file", format!("unsupported version {version}")));
    }
    let crc = r.u32("state checksum")?;
    let body = bytes.get(16..).unwrap_or_default();
    if crc32c::crc32c(body) != crc {
        return Err(r.invalid_at(12, "state file", "checksum mismatch".into()));
    }
    r.whole(|r| {
        let vote = if r.flag("vote present")? {
            Some(r.vote()?)
        } else {
            None
        };
        let committed = r.opt_log_id()?;
        let purged = r.opt_log_id()?;
        let snapshot = if r.flag("snapshot present")? {
            Some(SnapshotState {
                last_log_id: r.opt_log_id()?,
                membership_log_id: r.opt_log_id()?,
                membership: r.membership()?,
            })
        } else {
            None
        };
        Ok(LogState {
            vote,
            committed,
            purged,
            snapshot,
        })
    })
}

/// Messages as a hostile or broken peer sends them, for tests: a vote
/// request, an append of blank entries at given log ids, a snapshot
/// install. Nothing checks them here; the receiving node must.
pub mod crafted {
    use super::*;

    fn id((term, index): (u64, u64)) -> LogId {
        log_id(term, index)
    }

    /// A candidate's vote request for `term`.
    pub fn vote(term: u64, candidate: NodeId, last: Option<(u64, u64)>) -> Request {
        Request::Vote(VoteRequest::new(Vote::new(term, candidate), last.map(id)))
    }

    /// A leader's append of blank entries with the given log ids.
    pub fn append(
        term: u64,
        leader: NodeId,
        prev: Option<(u64, u64)>,
        entries: &[(u64, u64)],
    ) -> Request {
        Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(term, leader),
            prev_log_id: prev.map(id),
            entries: entries.iter().map(|e| Entry::new_blank(id(*e))).collect(),
            leader_commit: None,
        })
    }

    /// A leader's snapshot install of nothing, through `last`, with a
    /// membership of `voters`.
    pub fn install(term: u64, leader: NodeId, last: (u64, u64), voters: &[NodeId]) -> Request {
        let nodes: BTreeMap<NodeId, Node> = voters
            .iter()
            .map(|v| {
                (
                    *v,
                    Node {
                        addr: format!("node-{v}:1"),
                    },
                )
            })
            .collect();
        let config: BTreeSet<NodeId> = voters.iter().copied().collect();
        let membership = Membership::new(vec![config], nodes).unwrap_or_default();
        Request::SnapshotInstall {
            vote: Vote::new_committed(term, leader),
            meta: SnapshotState {
                last_log_id: Some(id(last)),
                membership_log_id: None,
                membership,
            },
            data: SegmentList::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_codec::{Level, LogRecord};
    use openraft::entry::RaftPayload;
    use proptest::prelude::*;

    fn membership() -> Membership {
        let nodes: BTreeMap<u64, Node> = (1..=3)
            .map(|i| {
                (
                    i,
                    Node {
                        addr: format!("127.0.0.1:74{i}0"),
                    },
                )
            })
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes).unwrap()
    }

    fn batch_entry(term: u64, index: u64) -> Entry {
        let records = vec![LogRecord {
            ts: 5,
            level: Level::Warn,
            service: "api".into(),
            host: "h".into(),
            attrs: vec![],
            message: "disk full".into(),
            tenant: String::new(),
        }];
        Entry::new(
            log_id(term, index),
            EntryPayload::Normal(Batch::new(EncodedBatch::encode(&records).unwrap())),
        )
    }

    fn append() -> Request {
        Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(2, 9)),
            entries: vec![
                batch_entry(3, 10),
                Entry::new(log_id(3, 11), EntryPayload::Blank),
                Entry::new(log_id(3, 12), EntryPayload::Membership(membership())),
            ],
            leader_commit: Some(log_id(2, 8)),
        })
    }

    fn segment(first_seq: u64) -> SegmentMeta {
        SegmentMeta {
            first_seq,
            last_seq: first_seq + 99,
            first_index: first_seq / 10,
            last_index: first_seq / 10 + 9,
            min_ts: 1,
            max_ts: 2,
            records: 100,
            wal_bytes: 9000,
            sst_bytes: 4000,
            sst_crc32c: 0xfeed,
            sealed_at: 3,
            records_crc32c: Some(9),
            layout: lode_codec::Layout::Chunks,
        }
    }

    #[test]
    fn snapshot_messages_round_trip_and_refuse_damage() {
        let list = SegmentList {
            segments: vec![segment(1), segment(101)],
            floor: 1,
            end_seq: 201,
            settings: Some(Settings::from([("token/ab".to_owned(), b"{}".to_vec())])),
            keys: vec![KeyedEntry {
                index: 28,
                key: lode_codec::BatchKey {
                    producer: 5,
                    sequence: 6,
                },
                seqs: lode_codec::SeqRange {
                    start: 190,
                    end: 201,
                },
            }],
        };
        let meta = SnapshotState {
            last_log_id: Some(log_id(2, 29)),
            membership_log_id: Some(log_id(1, 1)),
            membership: membership(),
        };
        let requests = [
            Request::SnapshotOffer(list.clone()),
            Request::SnapshotChunk(Chunk {
                segment: segment(101),
                offset: 2 << 20,
                crc32c: 5,
                bytes: vec![7; 1000],
            }),
            Request::SnapshotInstall {
                vote: Vote::new(2, 1),
                meta: meta.clone(),
                data: list.clone(),
            },
        ];
        for req in &requests {
            let bytes = encode_request(9, req);
            let (_, back) = decode_request(&bytes).unwrap();
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
            // Every cut of it is refused, never a panic.
            for cut in [5, 14, bytes.len() / 2, bytes.len() - 1] {
                let mut short = bytes[..cut].to_vec();
                let len = (cut as u32).saturating_sub(4);
                short[..4].copy_from_slice(&len.to_le_bytes());
                assert!(decode_request(&short).is_err(), "cut at {cut}");
            }
        }
        let description = SnapshotDescription {
            state: meta,
            floor: 51,
            end_seq: 201,
            settings: list.settings.clone(),
        };
        let bytes = encode_description(&description);
        assert_eq!(decode_description(&bytes).unwrap(), description);
        // A description of version 1 (no settings) still reads.
        let mut old = bytes[..bytes.len() - (1 + 4 + 4 + 8 + 4 + 2)].to_vec();
        old[0] = 1;
        let read = decode_description(&old).unwrap();
        assert_eq!((read.floor, read.settings), (51, None));
        assert!(decode_description(&bytes[..bytes.len() - 1]).is_err());
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(decode_description(&other).is_err());
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let bytes = encode_request(7, &append());
        let (id, back) = decode_request(&bytes).unwrap();
        assert_eq!(id, 7);
        let (Request::Append(a), Request::Append(b)) = (&back, &append()) else {
            panic!("{back:?}")
        };
        assert_eq!(
            (a.vote, a.prev_log_id, a.leader_commit),
            (b.vote, b.prev_log_id, b.leader_commit)
        );
        assert_eq!(a.entries.len(), 3);
        for (x, y) in a.entries.iter().zip(&b.entries) {
            assert_eq!(x.log_id, y.log_id);
            assert_eq!(
                format!("{:?}", x.payload.get_membership()),
                format!("{:?}", y.payload.get_membership())
            );
        }
        let EntryPayload::Normal(batch) = &a.entries[0].payload else {
            panic!()
        };
        let EntryPayload::Normal(original) = &b.entries[0].payload else {
            panic!()
        };
        assert_eq!(
            batch.0.payload(),
            original.0.payload(),
            "a batch ships its WAL bytes"
        );

        let mut vote = VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 12)));
        vote.leadership_transfer = true;
        let (_, back) =
            decode_request(&encode_request(1, &Request::PreVote(vote.clone()))).unwrap();
        let Request::PreVote(back) = back else {
            panic!()
        };
        assert_eq!(back, vote);

        let EntryPayload::Normal(shipped) = &b.entries[0].payload else {
            panic!()
        };
        let forward = Request::Forward((*shipped.0).clone());
        let (_, back) = decode_request(&encode_request(2, &forward)).unwrap();
        let Request::Forward(back) = back else {
            panic!()
        };
        assert_eq!(back.payload(), shipped.0.payload());

        // A keyed batch keeps its kind and key, as an entry and forwarded.
        let key = lode_codec::BatchKey {
            producer: 77,
            sequence: 3,
        };
        let keyed = (*shipped.0).clone().with_key(key).unwrap();
        let (_, back) =
            decode_request(&encode_request(3, &Request::Forward(keyed.clone()))).unwrap();
        let Request::Forward(back) = back else {
            panic!()
        };
        assert_eq!((back.key(), back.payload()), (Some(key), keyed.payload()));
        let mut append = b.clone();
        append.entries = vec![Entry::new(
            log_id(5, 13),
            EntryPayload::Normal(Batch::new(keyed)),
        )];
        let (_, back) = decode_request(&encode_request(4, &Request::Append(append))).unwrap();
        let Request::Append(back) = back else {
            panic!()
        };
        let EntryPayload::Normal(got) = &back.entries[0].payload else {
            panic!()
        };
        assert_eq!(
            (got.0.kind(), got.0.key()),
            (FrameKind::KeyedBatch, Some(key))
        );

        // A retention decision keeps its seq; one whose payload is not a
        // seq is refused.
        let mut append = b.clone();
        append.entries = vec![Entry::new(
            log_id(5, 14),
            EntryPayload::Normal(Batch::new(EncodedBatch::retain(4001).unwrap())),
        )];
        let bytes = encode_request(5, &Request::Append(append.clone()));
        let (_, back) = decode_request(&bytes).unwrap();
        let Request::Append(back) = back else {
            panic!()
        };
        let EntryPayload::Normal(got) = &back.entries[0].payload else {
            panic!()
        };
        assert_eq!(got.0.retain_floor(), Some(4001));
        append.entries = vec![Entry::new(
            log_id(5, 14),
            EntryPayload::Normal(Batch::new(
                EncodedBatch::without_records(FrameKind::Retain, b"short").unwrap(),
            )),
        )];
        let err = decode_request(&encode_request(5, &Request::Append(append))).unwrap_err();
        assert!(err.to_string().contains("retention entry"), "{err}");

        for resp in [
            Response::Append(AppendEntriesResponse::Success),
            Response::Append(AppendEntriesResponse::PartialSuccess(Some(log_id(1, 2)))),
            Response::Append(AppendEntriesResponse::Conflict),
            Response::Append(AppendEntriesResponse::HigherVote(Vote::new(9, 3))),
            Response::Vote(VoteResponse::new(Vote::new(4, 2), None, true)),
            Response::TransferLeader(Err("vote changed".into())),
            Response::Written { start: 1, end: 26 },
            Response::ReadIndex(812),
            Response::NotLeader(Some((3, "127.0.0.1:7430".into()))),
            Response::NotLeader(None),
            Response::SnapshotNeed(vec![Needed {
                first_seq: 101,
                sst_crc32c: 0xabcd,
                from: 4 << 20,
            }]),
            Response::ChunkStaged(77),
            Response::ChunkRefused {
                staged: 5,
                reason: "bad crc".into(),
            },
            Response::Installed(Vote::new(3, 1)),
            Response::NoSpace(vec![2, 3]),
            Response::NoSpace(Vec::new()),
            Response::Error("shutting down".into()),
        ] {
            let (id, back) = decode_response(&encode_response(u64::MAX, &resp)).unwrap();
            assert_eq!((id, format!("{back:?}")), (u64::MAX, format!("{resp:?}")));
        }
    }

    #[test]
    fn bad_messages_are_named_errors() {
        let bytes = encode_request(7, &append());
        for cut in 0..bytes.len() {
            assert!(decode_request(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut other_version = bytes.clone();
        other_version[4] = 9;
        assert_eq!(
            decode_request(&other_version).unwrap_err(),
            WireError::Version(9)
        );
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_request(&huge),
            Err(WireError::TooLarge { .. })
        ));
        // A batch entry whose records do not check is refused, not logged.
        let at = bytes.len() - 200;
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xff;
        let _ = decode_request(&damaged);
    }

    #[test]
    fn the_state_file_round_trips_and_detects_damage() {
        let state = LogState {
            vote: Some(Vote::new_committed(5, 2)),
            committed: Some(log_id(5, 100)),
            purged: Some(log_id(4, 50)),
            snapshot: Some(SnapshotState {
                last_log_id: Some(log_id(4, 50)),
                membership_log_id: Some(log_id(1, 0)),
                membership: membership(),
            }),
        };
        let bytes = encode_state(&state);
        assert_eq!(decode_state(&bytes).unwrap(), state);
        assert_eq!(
            decode_state(&encode_state(&LogState::default())).unwrap(),
            LogState::default()
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_state(&flipped).is_err(), "bit {bit}");
        }
    }

    proptest! {
        #[test]
        fn no_bytes_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_state(&bytes);
            let _ = decode_membership(&bytes);
        }

        #[test]
        fn damaged_requests_never_panic(at in 0usize..4096, byte in any::<u8>()) {
            let mut bytes = encode_request(1, &append());
            let at = at % bytes.len();
            bytes[at] = byte;
            let _ = decode_request(&bytes);
        }
    }
}
