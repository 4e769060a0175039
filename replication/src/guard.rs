//! What a peer's message must satisfy before openraft sees it.
//!
//! openraft trusts the messages it is handed: some field values make its
//! core panic (`assert!`s on a snapshot's log id) or stop it with a
//! storage error (entries that do not follow each other), and a term of
//! `u64::MAX` overflows at the next election. A peer with a valid
//! certificate may still be buggy, or a node of another cluster under the
//! same CA, so every message is checked here first, against the sender's
//! identity (its certificate's node id) and this node's vote and
//! committed log id. Raft is not Byzantine-tolerant: these checks make a
//! crash or a stopped core unreachable, they do not make a malicious
//! member harmless.
//!
//! Pure functions over values: the peer link calls them, the tests feed
//! them crafted messages.

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteResponse};

use lode_replication_wire::wire::Request;
use lode_replication_wire::{Entry, LogId, Membership, NodeId, TypeConfig, Vote};

/// How far past this node's term a peer may lead: elections move terms by
/// ones, so a jump of 2^32 is no real leader, and it keeps every term far
/// from `u64::MAX`.
const MAX_TERM_JUMP: u64 = 1 << 32;

/// What a check needs of this node.
#[derive(Debug, Clone)]
pub(crate) struct Local {
    pub(crate) id: NodeId,
    pub(crate) vote: Vote,
    /// The newest log id this node knows to be committed.
    pub(crate) committed: Option<LogId>,
}

/// Why a message is refused: a sentence naming the field.
pub(crate) type Refusal = String;

/// `term` is at most `MAX_TERM_JUMP` past `ours` (this node's term).
fn term_ok(term: u64, ours: u64) -> Result<(), Refusal> {
    let max = ours.saturating_add(MAX_TERM_JUMP);
    if term == u64::MAX || term > max {
        return Err(format!(
            "term {term} is past this node's term {ours} by more than {MAX_TERM_JUMP}"
        ));
    }
    Ok(())
}

fn log_id_ok(what: &str, id: Option<&LogId>, term: u64) -> Result<(), Refusal> {
    match id {
        Some(id) if id.leader_id.term > term => Err(format!(
            "{what} has term {}, past the sender's term {term}",
            id.leader_id.term
        )),
        Some(id) if id.index == u64::MAX => Err(format!("{what} has index u64::MAX")),
        _ => Ok(()),
    }
}

/// A leader's vote (append, snapshot, transfer): committed, for the
/// sender, not for this node.
fn leader_vote_ok(vote: &Vote, sender: NodeId, local: &Local) -> Result<(), Refusal> {
    if !vote.committed {
        return Err("a leader's message carries an uncommitted vote".to_owned());
    }
    candidate_ok(vote, sender, local)
}

fn candidate_ok(vote: &Vote, sender: NodeId, local: &Local) -> Result<(), Refusal> {
    let voted_for = vote.leader_id.voted_for;
    if voted_for != sender {
        return Err(format!(
            "the vote is for node {voted_for}, but node {sender} sent it"
        ));
    }
    if voted_for == local.id {
        return Err(format!("a peer sent a vote for this node ({voted_for})"));
    }
    if vote.leader_id.term == 0 {
        return Err("a vote of term 0".to_owned());
    }
    term_ok(vote.leader_id.term, local.vote.leader_id.term)
}

fn membership_ok(m: &Membership) -> Result<(), Refusal> {
    let configs = m.get_joint_config().len();
    if !(1..=2).contains(&configs) {
        return Err(format!("a membership of {configs} configurations"));
    }
    Ok(())
}

fn entries_ok(request: &AppendEntriesRequest<TypeConfig>) -> Result<(), Refusal> {
    let term = request.vote.leader_id.term;
    log_id_ok("prev_log_id", request.prev_log_id.as_ref(), term)?;
    log_id_ok("leader_commit", request.leader_commit.as_ref(), term)?;
    let mut previous = request.prev_log_id;
    for entry in &request.entries {
        let id = entry.log_id;
        let expected = previous.map_or(0, |p| p.index + 1);
        if id.index != expected {
            return Err(format!(
                "entry {} does not follow {previous:?} (expected index {expected})",
                id.index
            ));
        }
        if previous.is_some_and(|p| p.leader_id.term > id.leader_id.term) {
            return Err(format!(
                "entry {} has term {}, below the entry before it",
                id.index, id.leader_id.term
            ));
        }
        log_id_ok("an entry", Some(&id), term)?;
        if let Some(m) = membership_of(entry) {
            membership_ok(m)?;
        }
        previous = Some(id);
    }
    Ok(())
}

fn membership_of(entry: &Entry) -> Option<&Membership> {
    match &entry.payload {
        openraft::EntryPayload::Membership(m) => Some(m),
        _ => None,
    }
}

/// Checks a request from `sender` (its certificate's node id). Forwards,
/// read-index requests and snapshot chunks carry no claim to check here
/// (the snapshot module checks that offers and chunks come from the
/// leader).
pub(crate) fn check_request(
    request: &Request,
    sender: NodeId,
    local: &Local,
) -> Result<(), Refusal> {
    match request {
        Request::Vote(v) | Request::PreVote(v) => {
            if v.vote.committed {
                return Err("a vote request carries a committed vote".to_owned());
            }
            candidate_ok(&v.vote, sender, local)?;
            log_id_ok("last_log_id", v.last_log_id.as_ref(), v.vote.leader_id.term)
        }
        Request::Append(a) => {
            leader_vote_ok(&a.vote, sender, local)?;
            entries_ok(a)
        }
        Request::TransferLeader(t) => {
            let from = t.from_leader();
            leader_vote_ok(from, sender, local)?;
            log_id_ok("last_log_id", t.last_log_id(), from.leader_id.term)
        }
        Request::SnapshotInstall { vote, meta, .. } => {
            leader_vote_ok(vote, sender, local)?;
            let term = vote.leader_id.term;
            let Some(last) = meta.last_log_id else {
                return Err("a snapshot without a last log id".to_owned());
            };
            log_id_ok("the snapshot's last log id", Some(&last), term)?;
            if meta.membership_log_id.is_some_and(|m| m > last) {
                return Err("the snapshot's membership is newer than its last log id".to_owned());
            }
            membership_ok(&meta.membership)?;
            // openraft asserts that a snapshot past the committed log id
            // also lies past its index (a higher term at the same index
            // would be a conflicting committed entry).
            match local.committed {
                Some(committed) if last > committed && last.index <= committed.index => {
                    Err(format!(
                        "the snapshot's last log id {last} conflicts with committed {committed}"
                    ))
                }
                _ => Ok(()),
            }
        }
        Request::Forward(_)
        | Request::ReadIndex
        | Request::ForwardSetting { .. }
        | Request::SnapshotOffer(_)
        | Request::SnapshotChunk(_) => Ok(()),
    }
}

/// Whether a snapshot install is already covered: its last log id is at
/// or below what this node has committed (answered without openraft).
pub(crate) fn snapshot_is_stale(last: Option<LogId>, local: &Local) -> bool {
    matches!((last, local.committed), (Some(last), Some(committed)) if last <= committed)
}

/// Checks a follower's answer to `sent`: a conflict needs a previous log
/// id to conflict at, a partial success names an entry that was sent,
/// and a higher vote keeps terms bounded.
pub(crate) fn check_append_response(
    sent: &Sent,
    response: &AppendEntriesResponse<TypeConfig>,
) -> Result<(), Refusal> {
    match response {
        AppendEntriesResponse::Success => Ok(()),
        AppendEntriesResponse::Conflict if sent.prev_log_id.is_none() => {
            Err("a conflict answered to entries from the log's start".to_owned())
        }
        AppendEntriesResponse::Conflict => Ok(()),
        AppendEntriesResponse::PartialSuccess(upto) => {
            let known =
                *upto == sent.prev_log_id || sent.entries.iter().any(|id| Some(*id) == *upto);
            if known {
                Ok(())
            } else {
                Err(format!(
                    "a partial success up to {upto:?}, which was not sent"
                ))
            }
        }
        AppendEntriesResponse::HigherVote(vote) => term_ok(vote.leader_id.term, sent.term),
    }
}

/// What an append sent, for checking its answer.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub(crate) term: u64,
    pub(crate) prev_log_id: Option<LogId>,
    pub(crate) entries: Vec<LogId>,
}

impl Sent {
    pub(crate) fn of(request: &AppendEntriesRequest<TypeConfig>) -> Sent {
        Sent {
            term: request.vote.leader_id.term,
            prev_log_id: request.prev_log_id,
            entries: request.entries.iter().map(|e| e.log_id).collect(),
        }
    }
}

/// Checks a voter's answer to a request of term `asked`: terms bounded.
pub(crate) fn check_vote_response(
    response: &VoteResponse<TypeConfig>,
    asked: u64,
) -> Result<(), Refusal> {
    term_ok(response.vote.leader_id.term, asked)?;
    log_id_ok(
        "last_log_id",
        response.last_log_id.as_ref(),
        response.vote.leader_id.term,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_replication_wire::wire::{SegmentList, SnapshotState, log_id};
    use lode_replication_wire::{Batch, Node};
    use openraft::entry::RaftEntry;
    use openraft::raft::VoteRequest;
    use std::collections::BTreeMap;

    fn local() -> Local {
        Local {
            id: 1,
            vote: Vote::new_committed(5, 2),
            committed: Some(log_id(5, 100)),
        }
    }

    fn entry(term: u64, index: u64) -> Entry {
        let batch = lode_codec::EncodedBatch::encode(&[]).unwrap();
        Entry::new_normal(log_id(term, index), Batch::new(batch))
    }

    fn append(prev: Option<LogId>, entries: Vec<Entry>) -> Request {
        Request::Append(AppendEntriesRequest {
            vote: Vote::new_committed(5, 2),
            prev_log_id: prev,
            entries,
            leader_commit: Some(log_id(5, 100)),
        })
    }

    fn membership(configs: Vec<Vec<u64>>) -> Membership {
        let nodes: BTreeMap<u64, Node> = configs
            .iter()
            .flatten()
            .map(|id| (*id, Node { addr: "a:1".into() }))
            .collect();
        let configs = configs
            .into_iter()
            .map(|c| c.into_iter().collect())
            .collect();
        Membership::new(configs, nodes).unwrap()
    }

    #[test]
    fn honest_messages_pass() {
        let l = local();
        let ok = append(Some(log_id(5, 100)), vec![entry(5, 101), entry(5, 102)]);
        assert_eq!(check_request(&ok, 2, &l), Ok(()));
        let heartbeat = append(Some(log_id(5, 100)), vec![]);
        assert_eq!(check_request(&heartbeat, 2, &l), Ok(()));
        let vote = Request::Vote(VoteRequest::new(Vote::new(6, 3), Some(log_id(5, 120))));
        assert_eq!(check_request(&vote, 3, &l), Ok(()));
        let install = Request::SnapshotInstall {
            vote: Vote::new_committed(6, 3),
            meta: SnapshotState {
                last_log_id: Some(log_id(6, 400)),
                membership_log_id: Some(log_id(1, 1)),
                membership: membership(vec![vec![1, 2, 3]]),
            },
            data: SegmentList::default(),
        };
        assert_eq!(check_request(&install, 3, &l), Ok(()));
    }

    #[test]
    fn crafted_messages_are_refused() {
        let l = local();
        let refused = |request: Request, sender: NodeId| {
            check_request(&request, sender, &l).expect_err("refused")
        };
        // A sender claiming another's identity.
        refused(append(Some(log_id(5, 100)), vec![]), 3);
        // Entries that do not follow each other or the previous log id.
        refused(append(Some(log_id(5, 100)), vec![entry(5, 102)]), 2);
        refused(
            append(Some(log_id(5, 100)), vec![entry(5, 101), entry(5, 103)]),
            2,
        );
        refused(append(None, vec![entry(5, 7)]), 2);
        // Terms past the leader's, or falling.
        refused(append(Some(log_id(5, 100)), vec![entry(6, 101)]), 2);
        refused(append(Some(log_id(4, 100)), vec![entry(3, 101)]), 2);
        // A term at the end of the range.
        let huge = Request::Vote(VoteRequest::new(Vote::new(u64::MAX, 3), None));
        refused(huge, 3);
        // A vote for this node, or committed, in a vote request.
        refused(Request::Vote(VoteRequest::new(Vote::new(6, 1), None)), 1);
        refused(
            Request::Vote(VoteRequest::new(Vote::new_committed(6, 3), None)),
            3,
        );
        // A membership of no configuration.
        let m = Membership::default();
        refused(
            append(
                Some(log_id(5, 100)),
                vec![Entry::new_membership(log_id(5, 101), m)],
            ),
            2,
        );
        // A snapshot that conflicts with what is committed, or whose term
        // is past its sender's.
        let install = |last: LogId| Request::SnapshotInstall {
            vote: Vote::new_committed(6, 3),
            meta: SnapshotState {
                last_log_id: Some(last),
                membership_log_id: None,
                membership: membership(vec![vec![1, 2, 3]]),
            },
            data: SegmentList::default(),
        };
        refused(install(log_id(6, 90)), 3);
        refused(install(log_id(7, 400)), 3);
        assert!(snapshot_is_stale(Some(log_id(5, 90)), &l));
        assert!(!snapshot_is_stale(Some(log_id(6, 400)), &l));
    }

    #[test]
    fn crafted_answers_are_refused() {
        let Request::Append(from_start) = append(None, vec![entry(1, 0)]) else {
            unreachable!()
        };
        let from_start = Sent::of(&from_start);
        let conflict = AppendEntriesResponse::Conflict;
        assert!(check_append_response(&from_start, &conflict).is_err());
        let Request::Append(sent) = append(Some(log_id(5, 100)), vec![entry(5, 101)]) else {
            unreachable!()
        };
        let sent = Sent::of(&sent);
        assert!(check_append_response(&sent, &conflict).is_ok());
        let partial = AppendEntriesResponse::PartialSuccess(Some(log_id(5, 101)));
        assert!(check_append_response(&sent, &partial).is_ok());
        let beyond = AppendEntriesResponse::PartialSuccess(Some(log_id(5, 500)));
        assert!(check_append_response(&sent, &beyond).is_err());
        let higher = AppendEntriesResponse::HigherVote(Vote::new(u64::MAX - 1, 3));
        assert!(check_append_response(&sent, &higher).is_err());
        let answer = VoteResponse::new(Vote::new(u64::MAX - 1, 3), None, false);
        assert!(check_vote_response(&answer, 6).is_err());
    }
}
