//! The binary protocol. Drawn byte by byte in `docs/protocol.md`.
//!
//! A connection opens with an 8-byte hello each way (in version 2, each
//! followed by a small block: the client's credentials, the server's
//! tenant for the session), then carries frames:
//!
//! ```text
//! hello        "LODE" | version u16 | status u16        (client sends status 0)
//! credentials  token_len u16 | token | tenants_len u16 | tenants   (client, version 2)
//! session      tenant_len u16 | tenant                            (server, version 2, status ok)
//! frame        len u32 | kind u8 | flags u8 | reserved u16 | id u64 | payload
//! ```
//!
//! Integers are little endian. `id` is chosen by the client; every response
//! frame carries the id of its request, so many requests are in flight on
//! one connection. A response stream (query pages, a tail) is several
//! frames with the `MORE` flag and a last one without it.
//!
//! Owns the byte layout and its checks; never does I/O.

use lode_codec::LogRecord;
use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};

/// The protocol version this build speaks: 2 carries credentials in the
/// handshake.
pub const VERSION: u16 = 2;
/// The oldest version a server still serves (version 1 carried no
/// credentials and no tenant with a record).
pub const MIN_VERSION: u16 = 2;
/// Longest token or tenant list a hello may carry.
pub const MAX_CREDENTIAL: usize = 4096;
/// Bytes of the hello each side sends first.
pub const HELLO_LEN: usize = 8;
const MAGIC: &[u8; 4] = b"LODE";
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 16;
/// Largest frame payload unless configured otherwise: 64 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 64 << 20;
/// Flag of a response frame that is followed by more for the same id.
pub const MORE: u8 = 1;

/// Errors of the wire decoders. A connection that sends any of these is
/// answered with one error frame and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("not a lode peer: the hello does not start with \"LODE\"")]
    NotLode,
    #[error("protocol version {peer} is not supported (this side speaks {VERSION})")]
    UnsupportedVersion { peer: u16 },
    #[error("frame of {len} bytes exceeds max_frame_bytes = {max}")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame header: reserved bytes are {0:#06x}, not zero")]
    Reserved(u16),
    #[error("bad message: {0}")]
    BadMessage(String),
}

/// The side that answers a hello: `Ok` or the reason it refuses (the
/// server closes the connection after a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    Ok,
    UnsupportedVersion,
    /// No token, or one the server does not know (or expired).
    Unauthorized,
    /// The token does not allow the tenants asked for.
    Forbidden,
}

/// Encodes a hello: a client's (status `Ok`) or a server's answer.
pub fn encode_hello(version: u16, status: HelloStatus) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[..4].copy_from_slice(MAGIC);
    out[4..6].copy_from_slice(&version.to_le_bytes());
    let status: u16 = match status {
        HelloStatus::Ok => 0,
        HelloStatus::UnsupportedVersion => 1,
        HelloStatus::Unauthorized => 2,
        HelloStatus::Forbidden => 3,
    };
    out[6..8].copy_from_slice(&status.to_le_bytes());
    out
}

/// Decodes a hello into the peer's version and status (an unknown status
/// reads as an unsupported version).
pub fn decode_hello(bytes: &[u8; HELLO_LEN]) -> Result<(u16, HelloStatus), WireError> {
    let [m0, m1, m2, m3, v0, v1, s0, s1] = *bytes;
    if &[m0, m1, m2, m3] != MAGIC {
        return Err(WireError::NotLode);
    }
    let status = match u16::from_le_bytes([s0, s1]) {
        0 => HelloStatus::Ok,
        2 => HelloStatus::Unauthorized,
        3 => HelloStatus::Forbidden,
        _ => HelloStatus::UnsupportedVersion,
    };
    Ok((u16::from_le_bytes([v0, v1]), status))
}

/// Appends a length-prefixed string of the handshake (u16 length).
pub fn encode_str16(text: &str, out: &mut Vec<u8>) -> Result<(), WireError> {
    if text.len() > MAX_CREDENTIAL {
        return Err(WireError::BadMessage(format!(
            "a handshake string of {} bytes (at most {MAX_CREDENTIAL})",
            text.len()
        )));
    }
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// The credentials block a version 2 client sends after its hello: its
/// token (empty for none) and the tenants it asks for (empty for its
/// token's own, or the default tenant).
pub fn encode_credentials(token: &str, tenants: &str) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(4 + token.len() + tenants.len());
    encode_str16(token, &mut out)?;
    encode_str16(tenants, &mut out)?;
    Ok(out)
}

/// Reads a handshake string's length from its 2-byte prefix, refusing
/// one past [`MAX_CREDENTIAL`] before anything is read.
pub fn str16_len(prefix: [u8; 2]) -> Result<usize, WireError> {
    let len = usize::from(u16::from_le_bytes(prefix));
    if len > MAX_CREDENTIAL {
        return Err(WireError::BadMessage(format!(
            "a handshake string of {len} bytes (at most {MAX_CREDENTIAL})"
        )));
    }
    Ok(len)
}

/// Decodes a whole credentials block: (token, tenants).
pub fn decode_credentials(bytes: &[u8]) -> Result<(String, String), WireError> {
    let mut rest = bytes;
    let mut next = || -> Result<String, WireError> {
        let (prefix, tail) = rest
            .split_first_chunk::<2>()
            .ok_or_else(|| WireError::BadMessage("credentials: truncated".into()))?;
        let len = str16_len(*prefix)?;
        let (text, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| WireError::BadMessage("credentials: truncated".into()))?;
        rest = tail;
        String::from_utf8(text.to_vec())
            .map_err(|e| WireError::BadMessage(format!("credentials: {e}")))
    };
    let token = next()?;
    let tenants = next()?;
    if !rest.is_empty() {
        return Err(WireError::BadMessage(format!(
            "credentials: {} bytes after the end",
            rest.len()
        )));
    }
    Ok((token, tenants))
}

/// What a frame's payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A batch payload exactly as the WAL stores it (see `lode-codec`).
    Append = 1,
    /// An rkyv [`Request`].
    Request = 2,
    /// An rkyv [`Response`].
    Response = 3,
    /// A batch payload followed by its producer's 16-byte key
    /// (`lode_codec::BatchKey`): a batch a cluster writes once however
    /// often it is retried.
    KeyedAppend = 4,
}

impl Kind {
    fn from_u8(byte: u8) -> Result<Kind, WireError> {
        match byte {
            1 => Ok(Kind::Append),
            2 => Ok(Kind::Request),
            3 => Ok(Kind::Response),
            4 => Ok(Kind::KeyedAppend),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// A frame's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u8,
    pub id: u64,
    pub len: u32,
}

/// A whole frame, borrowed from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub flags: u8,
    pub id: u64,
    pub payload: &'a [u8],
}

/// Checks a frame header: known kind, zero reserved bytes, payload length
/// within `max_frame`.
pub fn decode_header(bytes: &[u8; FRAME_HEADER], max_frame: u32) -> Result<Header, WireError> {
    let [
        l0,
        l1,
        l2,
        l3,
        kind,
        flags,
        r0,
        r1,
        i0,
        i1,
        i2,
        i3,
        i4,
        i5,
        i6,
        i7,
    ] = *bytes;
    let len = u32::from_le_bytes([l0, l1, l2, l3]);
    if len > max_frame {
        return Err(WireError::FrameTooLarge {
            len,
            max: max_frame,
        });
    }
    let reserved = u16::from_le_bytes([r0, r1]);
    if reserved != 0 {
        return Err(WireError::Reserved(reserved));
    }
    Ok(Header {
        kind: Kind::from_u8(kind)?,
        flags,
        id: u64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
        len,
    })
}

/// Decodes the first frame of `buf`: `Ok(None)` while it is incomplete,
/// else the frame and the bytes it used. A bad header is an error as soon
/// as its 16 bytes are there, before any payload is waited for.
pub fn decode_frame(buf: &[u8], max_frame: u32) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let Some(head) = buf.first_chunk::<FRAME_HEADER>() else {
        return Ok(None);
    };
    let header = decode_header(head, max_frame)?;
    let end = FRAME_HEADER + header.len as usize;
    Ok(buf.get(FRAME_HEADER..end).map(|payload| {
        (
            Frame {
                kind: header.kind,
                flags: header.flags,
                id: header.id,
                payload,
            },
            end,
        )
    }))
}

/// Appends a frame header for a payload of `len` bytes to `out`.
pub fn encode_header(kind: Kind, flags: u8, id: u64, len: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind as u8);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&id.to_le_bytes());
}

/// Appends a whole frame to `out`.
pub fn encode_frame(
    kind: Kind,
    flags: u8,
    id: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let len = u32::try_from(payload.len()).map_err(|_| WireError::FrameTooLarge {
        len: u32::MAX,
        max: DEFAULT_MAX_FRAME,
    })?;
    out.reserve(FRAME_HEADER + payload.len());
    encode_header(kind, flags, id, len, out);
    out.extend_from_slice(payload);
    Ok(())
}

/// A record as it travels back to a client: its seq, its tenant (the
/// record's archive does not carry it) and its content.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub seq: u64,
    /// As stored: empty for the default tenant.
    pub tenant: String,
    pub record: LogRecord,
}

impl WireRecord {
    pub fn new(seq: u64, record: LogRecord) -> WireRecord {
        WireRecord {
            seq,
            tenant: record.tenant.clone(),
            record,
        }
    }

    /// The record, its tenant included.
    pub fn into_log(self) -> LogRecord {
        LogRecord {
            tenant: self.tenant,
            ..self.record
        }
    }
}

/// Which records a request is about: a query and a time range (ns,
/// `since <= ts < until`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    pub query: String,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// The requests besides appends (which are their own frame kind).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    Ping,
    /// Newest first; answered by `PageEnd`, after `Records` frames when
    /// the page holds more than fits one frame.
    Query {
        filter: Filter,
        limit: u32,
        cursor: Option<String>,
    },
    Count {
        filter: Filter,
    },
    Histogram {
        filter: Filter,
        /// Bucket width in ns; a readable one when absent.
        width: Option<i64>,
    },
    Top {
        filter: Filter,
        /// `level`, `service` or `host`.
        field: String,
        k: u32,
    },
    /// Records matching `query` from `from_seq` (the next one when absent)
    /// on, pushed as they become durable until cancelled.
    Tail {
        query: String,
        from_seq: Option<u64>,
    },
    Stats,
    /// Stops the stream of request `id` (a tail, a long query).
    Cancel {
        id: u64,
    },
    /// Answered by `Done` once a read on this connection sees every write
    /// acknowledged before the barrier, by any node of a cluster (a
    /// linearizable read: the barrier, then the query).
    ReadBarrier,
}

/// Everything a server sends.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    Pong {
        server: String,
    },
    /// The batch is durable with seqs `start..end`.
    Appended {
        start: u64,
        end: u64,
    },
    Records {
        records: Vec<WireRecord>,
    },
    /// The last frame of a query's answer: its last records and the cursor.
    PageEnd {
        /// The page's last (often only) records.
        records: Vec<WireRecord>,
        next_cursor: Option<String>,
    },
    Count {
        count: u64,
    },
    Histogram {
        start: i64,
        width: i64,
        buckets: Vec<u64>,
    },
    Top {
        values: Vec<(String, u64)>,
    },
    /// Named figures, in a stable order.
    Stats {
        figures: Vec<(String, u64)>,
    },
    /// The request failed; `code` is an [`ErrorCode`] (kept as a number so
    /// an older client can read a newer server's codes).
    Error {
        code: u16,
        message: String,
    },
    /// The end of a stream that was cancelled or ended (a tail).
    Done,
}

/// Stable codes of the errors that cross the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A frame broke the protocol; the connection is closed after it.
    BadFrame = 1,
    UnsupportedVersion = 2,
    /// A request's values are wrong (an empty time range, an unknown field).
    BadRequest = 3,
    /// The query text does not parse; the message names the column.
    BadQuery = 4,
    /// A limit was exceeded; the message names it.
    TooLarge = 5,
    /// Too many connections or requests in flight; retry later.
    Busy = 6,
    /// The request ran past `query_timeout`.
    Timeout = 7,
    /// The engine cannot take writes (poisoned, closing).
    Unavailable = 8,
    Internal = 9,
    /// No credential, or one this server does not know (or expired).
    Unauthorized = 10,
    /// The credential does not allow this request (scope or tenant).
    Forbidden = 11,
    /// A format or encoding this server does not take.
    Unsupported = 12,
    /// A disk is below its free-space floor: writes are refused until
    /// space is freed; reads go on.
    NoSpace = 13,
}

impl ErrorCode {
    /// Every code, in number order.
    pub const ALL: [ErrorCode; 13] = {
        use ErrorCode::*;
        [
            BadFrame,
            UnsupportedVersion,
            BadRequest,
            BadQuery,
            TooLarge,
            Busy,
            Timeout,
            Unavailable,
            Internal,
            Unauthorized,
            Forbidden,
            Unsupported,
            NoSpace,
        ]
    };

    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| *c as u16 == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadQuery => "bad_query",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::NoSpace => "no_space",
        }
    }
}

fn to_bytes<T>(value: &T) -> Result<rkyv::util::AlignedVec, WireError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rancor::Error>(value).map_err(|e| WireError::BadMessage(e.to_string()))
}

/// Appends a request frame to `out`.
pub fn encode_request(id: u64, request: &Request, out: &mut Vec<u8>) -> Result<(), WireError> {
    encode_frame(Kind::Request, 0, id, &to_bytes(request)?, out)
}

/// Appends a response frame to `out`; `more` when others follow for `id`.
pub fn encode_response(
    id: u64,
    more: bool,
    response: &Response,
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let flags = if more { MORE } else { 0 };
    encode_frame(Kind::Response, flags, id, &to_bytes(response)?, out)
}

/// Checks and decodes a request payload.
pub fn decode_request(payload: &[u8]) -> Result<Request, WireError> {
    rkyv::from_bytes::<Request, rancor::Error>(payload)
        .map_err(|e| WireError::BadMessage(format!("request: {e}")))
}

/// Checks and decodes a response payload.
pub fn decode_response(payload: &[u8]) -> Result<Response, WireError> {
    rkyv::from_bytes::<Response, rancor::Error>(payload)
        .map_err(|e| WireError::BadMessage(format!("response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lode_codec::Level;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trips_and_refuses_strangers() {
        let hello = encode_hello(VERSION, HelloStatus::Ok);
        assert_eq!(decode_hello(&hello), Ok((VERSION, HelloStatus::Ok)));
        let refusal = encode_hello(VERSION, HelloStatus::UnsupportedVersion);
        assert_eq!(
            decode_hello(&refusal),
            Ok((VERSION, HelloStatus::UnsupportedVersion))
        );
        assert_eq!(decode_hello(b"GET / HT"), Err(WireError::NotLode));
    }

    #[test]
    fn credentials_round_trip_and_refuse_damage() {
        let block = encode_credentials("lode_ab_cd", "team-a|team-b").unwrap();
        assert_eq!(
            decode_credentials(&block).unwrap(),
            ("lode_ab_cd".to_owned(), "team-a|team-b".to_owned())
        );
        for cut in 0..block.len() {
            assert!(decode_credentials(&block[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = block.clone();
        longer.push(0);
        assert!(decode_credentials(&longer).is_err());
        assert!(encode_credentials(&"x".repeat(MAX_CREDENTIAL + 1), "").is_err());
        assert!(str16_len([0xff, 0xff]).is_err());
        for status in [HelloStatus::Unauthorized, HelloStatus::Forbidden] {
            assert_eq!(
                decode_hello(&encode_hello(VERSION, status)),
                Ok((VERSION, status))
            );
        }
    }

    #[test]
    fn frames_wait_for_their_bytes_and_check_the_header_first() {
        let mut bytes = Vec::new();
        encode_response(
            9,
            true,
            &Response::Records {
                records: vec![WireRecord {
                    seq: 5,
                    tenant: String::new(),
                    record: LogRecord {
                        level: Level::Warn,
                        message: "disk almost full".into(),
                        ..LogRecord::default()
                    },
                }],
            },
            &mut bytes,
        )
        .unwrap();
        for cut in 0..bytes.len() {
            assert_eq!(decode_frame(&bytes[..cut], DEFAULT_MAX_FRAME), Ok(None));
        }
        let (frame, used) = decode_frame(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(
            (frame.kind, frame.flags, frame.id),
            (Kind::Response, MORE, 9)
        );
        assert_eq!(used, bytes.len());
        let Response::Records { records } = decode_response(frame.payload).unwrap() else {
            panic!("not records");
        };
        assert_eq!(records[0].record.message, "disk almost full");

        let mut huge = Vec::new();
        encode_header(Kind::Append, 0, 1, 1 << 30, &mut huge);
        assert_eq!(
            decode_frame(&huge, DEFAULT_MAX_FRAME),
            Err(WireError::FrameTooLarge {
                len: 1 << 30,
                max: DEFAULT_MAX_FRAME
            })
        );
        let mut strange = bytes.clone();
        strange[4] = 77;
        assert_eq!(
            decode_frame(&strange, DEFAULT_MAX_FRAME),
            Err(WireError::UnknownKind(77))
        );
    }

    #[test]
    fn every_error_code_round_trips() {
        for code in 1..=12u16 {
            let known = ErrorCode::from_u16(code).unwrap();
            assert_eq!(known as u16, code);
            assert!(!known.name().is_empty());
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(1000), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// The decoders of network bytes never panic: a bounded, always-on
        /// companion of the cargo-fuzz target `server/fuzz`.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Some((frame, used))) = decode_frame(&bytes, 1 << 16) {
                prop_assert!(used <= bytes.len());
                let _ = decode_request(frame.payload);
                let _ = decode_response(frame.payload);
            }
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_credentials(&bytes);
            if let Some(hello) = bytes.first_chunk::<HELLO_LEN>() {
                let _ = decode_hello(hello);
            }
        }

        #[test]
        fn requests_round_trip(query in ".{0,40}", since in any::<Option<i64>>(), limit in any::<u32>(), id in any::<u64>()) {
            let request = Request::Query {
                filter: Filter { query, since, until: None },
                limit,
                cursor: Some("c".into()),
            };
            let mut bytes = Vec::new();
            encode_request(id, &request, &mut bytes).unwrap();
            let (frame, _) = decode_frame(&bytes, DEFAULT_MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(frame.id, id);
            prop_assert_eq!(decode_request(frame.payload).unwrap(), request);
        }
    }
}
