//! The binary protocol's connection loop, the same over a TCP stream and a
//! QUIC bidirectional stream.
//!
//! One reader decodes frames and hands each request to its own task; one
//! writer task sends the responses in the order they finish, tagged with
//! their request ids. At most `max_in_flight` requests run per connection:
//! past that the reader stops reading, so a fast client is slowed by TCP
//! (or QUIC) flow control and a slow one only holds up itself. A frame that
//! breaks the protocol is answered with one `bad_frame` error and closes
//! only that connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lode_engine::{FrameKind, Record};
use lode_protocol::ErrorCode;
use lode_protocol::wire::{
    self, FRAME_HEADER, HELLO_LEN, HelloStatus, Kind, MIN_VERSION, Request, Response, VERSION,
    WireRecord,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::auth::{Caller, Scope};
use crate::metrics::Source;
use crate::service::{Failure, Outcome, Service};

/// Bytes of a frame's payload reserved before they arrive.
const PAYLOAD_RESERVE: usize = 1 << 20;

/// Records per response frame of a query or tail stream.
const RECORDS_PER_FRAME: usize = 1000;
/// A peer must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Response frames queued for the writer of one connection.
const WRITE_QUEUE: usize = 256;

type Cancels = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

/// Where a connection's response frames go, and who the connection
/// acts as.
#[derive(Clone)]
struct Replies {
    tx: mpsc::Sender<Vec<u8>>,
    service: Arc<Service>,
    caller: Arc<Caller>,
}

impl Replies {
    async fn send(&self, id: u64, more: bool, response: &Response) -> bool {
        self.tx.send(frame(id, more, response)).await.is_ok()
    }

    fn blocking_send(&self, id: u64, more: bool, response: &Response) -> bool {
        self.tx.blocking_send(frame(id, more, response)).is_ok()
    }

    /// Sends a failure of this front end's own (a bad frame, busy) and
    /// counts it; `Service` failures are counted by the service.
    async fn fail(&self, id: u64, failure: Failure) -> bool {
        self.service.metrics.failed(failure.code);
        self.send(id, false, &error(failure)).await
    }
}

fn error(failure: Failure) -> Response {
    Response::Error {
        code: failure.code as u16,
        message: failure.message,
    }
}

fn frame(id: u64, more: bool, response: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = wire::encode_response(id, more, response, &mut out) {
        out.clear();
        let fallback = Response::Error {
            code: ErrorCode::Internal as u16,
            message: format!("encoding the response: {e}"),
        };
        let _ = wire::encode_response(id, false, &fallback, &mut out);
    }
    out
}

/// Serves one connection until the peer closes it or breaks the protocol.
pub(crate) async fn serve<R, W>(service: Arc<Service>, reader: R, writer: W, admitted: bool)
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    service.metrics.connection_opened();
    // Reads larger than the buffer bypass it: an append's payload goes
    // from the socket straight into its own buffer.
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut writer = BufWriter::with_capacity(256 << 10, writer);
    if let Some(caller) = handshake(&service, &mut reader, &mut writer).await {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writing = tokio::spawn(write_loop(writer, rx));
        let replies = Replies {
            tx,
            service: Arc::clone(&service),
            caller: Arc::new(caller),
        };
        if admitted {
            read_loop(&service, &mut reader, &replies).await;
        } else {
            let busy = Failure::new(
                ErrorCode::Busy,
                format!(
                    "the server has max_connections = {} open; retry later",
                    service.limits.max_connections
                ),
            );
            replies.fail(0, busy).await;
        }
        drop(replies);
        let _ = writing.await;
    }
    service.metrics.connection_closed();
}

/// Exchanges hellos (and, from version 2, the client's credentials and
/// the session's tenant); the caller the connection acts as, or `None`
/// when the peer is not a lode client of a version this server speaks
/// or its credential is refused (it is told which first).
async fn handshake<R, W>(service: &Service, reader: &mut R, writer: &mut W) -> Option<Caller>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let greeting = tokio::time::timeout(HELLO_TIMEOUT, read_greeting(reader)).await;
    let (version, credentials) = match greeting {
        Ok(Some(greeting)) => greeting,
        _ => return None,
    };
    let outcome = match credentials {
        None => Err(HelloStatus::UnsupportedVersion),
        Some((token, tenants)) => {
            let asked = match tenants.as_str() {
                "" => Ok(None),
                text => lode_protocol::auth::tenants(text)
                    .map(Some)
                    .map_err(|_| HelloStatus::Forbidden),
            };
            asked.and_then(|asked| {
                let token = Some(token.as_str()).filter(|t| !t.is_empty());
                service
                    .authenticate(Source::Binary, token, asked)
                    .map_err(|f| match f.code {
                        ErrorCode::Forbidden => HelloStatus::Forbidden,
                        _ => HelloStatus::Unauthorized,
                    })
            })
        }
    };
    let answer_version = version.clamp(MIN_VERSION, VERSION);
    let mut answer = wire::encode_hello(
        answer_version,
        outcome.as_ref().err().copied().unwrap_or(HelloStatus::Ok),
    )
    .to_vec();
    if let Ok(caller) = &outcome
        && version >= 2
    {
        let tenant = caller.tenants.first().map_or("", String::as_str);
        if wire::encode_str16(tenant, &mut answer).is_err() {
            return None;
        }
    }
    let sent = writer.write_all(&answer).await.is_ok() && writer.flush().await.is_ok();
    outcome.ok().filter(|_| sent)
}

/// Reads a client's hello and, from version 2, its credentials: the
/// version, and the (token, tenants) it sent (empty for version 1);
/// `None` credentials for a version this server does not speak, `None`
/// at all for a peer that is not a lode client.
async fn read_greeting<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Option<(u16, Option<(String, String)>)> {
    let mut hello = [0u8; HELLO_LEN];
    reader.read_exact(&mut hello).await.ok()?;
    let (version, _) = wire::decode_hello(&hello).ok()?;
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Some((version, None));
    }
    if version < 2 {
        return Some((version, Some((String::new(), String::new()))));
    }
    let mut read_str = async || -> Option<String> {
        let mut prefix = [0u8; 2];
        reader.read_exact(&mut prefix).await.ok()?;
        let mut text = vec![0u8; wire::str16_len(prefix).ok()?];
        reader.read_exact(&mut text).await.ok()?;
        String::from_utf8(text).ok()
    };
    let token = read_str().await?;
    let tenants = read_str().await?;
    Some((version, Some((token, tenants))))
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: BufWriter<W>,
    mut rx: mpsc::Receiver<Vec<u8>>,
) {
    while let Some(frame) = rx.recv().await {
        if writer.write_all(&frame).await.is_err() {
            return;
        }
        // Flush only when no other response is ready: one syscall for a
        // burst of small answers.
        while let Ok(frame) = rx.try_recv() {
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    service: &Arc<Service>,
    reader: &mut R,
    replies: &Replies,
) {
    let in_flight = Arc::new(Semaphore::new(service.limits.max_in_flight.max(1)));
    let cancels: Cancels = Arc::default();
    let (appends, pending) = mpsc::channel(service.limits.max_in_flight.max(1));
    tokio::spawn(submit_loop(replies.clone(), pending));
    loop {
        let mut head = [0u8; FRAME_HEADER];
        if reader.read_exact(&mut head).await.is_err() {
            break; // the peer closed the connection
        }
        let header = match wire::decode_header(&head, service.limits.max_frame_bytes) {
            Ok(header) => header,
            Err(e) => {
                let message = match e {
                    wire::WireError::FrameTooLarge { len, max } => {
                        format!("frame of {len} bytes exceeds max_frame_bytes = {max}")
                    }
                    other => other.to_string(),
                };
                replies
                    .fail(0, Failure::new(ErrorCode::BadFrame, message))
                    .await;
                break;
            }
        };
        // An append's payload is read after room for the WAL frame header,
        // so it reaches the log without another copy.
        let room = match header.kind {
            Kind::Append | Kind::KeyedAppend => lode_engine::HEADER_LEN,
            Kind::Request | Kind::Response => 0,
        };
        let len = header.len as usize;
        // Memory is reserved for what the header announces only up to
        // `PAYLOAD_RESERVE`; beyond, it grows as the bytes arrive, so a peer
        // announcing large frames and sending nothing holds little.
        let mut payload = Vec::with_capacity(room + len.min(PAYLOAD_RESERVE));
        payload.resize(room, 0);
        // Into the Vec's spare capacity: no zeroing pass over the payload.
        // A client that announces a frame must send it within
        // `body_timeout_ms`: a trickle cannot hold a connection.
        let read = tokio::time::timeout(
            service.limits.body_timeout(),
            (&mut *reader).take(len as u64).read_to_end(&mut payload),
        )
        .await;
        if !matches!(read, Ok(Ok(n)) if n == len) {
            break;
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let replies = replies.clone();
        let id = header.id;
        match header.kind {
            Kind::Append | Kind::KeyedAppend => {
                let kind = match header.kind {
                    Kind::KeyedAppend => FrameKind::KeyedBatch,
                    _ => FrameKind::Batch,
                };
                if appends.send((id, kind, payload, permit)).await.is_err() {
                    break;
                }
            }
            Kind::Request => match wire::decode_request(&payload) {
                Ok(Request::Cancel { id: target }) => {
                    if let Some(flag) = lock(&cancels).get(&target) {
                        flag.store(true, Ordering::Release);
                    }
                }
                Ok(request) => {
                    let cancels = Arc::clone(&cancels);
                    tokio::spawn(async move {
                        answer(&replies, id, request, cancels).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    replies
                        .fail(id, Failure::new(ErrorCode::BadFrame, e.to_string()))
                        .await;
                    break;
                }
            },
            Kind::Response => {
                let failure = Failure::new(ErrorCode::BadFrame, "a client may not send responses");
                replies.fail(id, failure).await;
                break;
            }
        }
    }
    // The connection is done: streams still running end.
    for flag in lock(&cancels).values() {
        flag.store(true, Ordering::Release);
    }
}

type PendingAppend = (u64, FrameKind, Vec<u8>, OwnedSemaphorePermit);

/// Hands a connection's appends to the engine one after the other, so they
/// get seqs in the order the client sent them; their acknowledgements are
/// awaited concurrently, so group commit can share one fsync among them.
async fn submit_loop(replies: Replies, mut pending: mpsc::Receiver<PendingAppend>) {
    while let Some((id, kind, payload, permit)) = pending.recv().await {
        match replies
            .service
            .submit_payload(&replies.caller, kind, payload)
            .await
        {
            Ok(pending) => {
                let replies = replies.clone();
                tokio::spawn(async move {
                    match replies.service.acknowledged(pending).await {
                        Ok(range) => {
                            let appended = Response::Appended {
                                start: range.start,
                                end: range.end,
                            };
                            replies.send(id, false, &appended).await
                        }
                        Err(failure) => replies.send(id, false, &error(failure)).await,
                    };
                    drop(permit);
                });
            }
            Err(failure) => {
                replies.send(id, false, &error(failure)).await;
            }
        }
    }
}

fn lock(cancels: &Cancels) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AtomicBool>>> {
    cancels
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Answers one request. Failures of `Service` calls are counted there;
/// only this front end's own (an unknown request) are counted here.
async fn answer(replies: &Replies, id: u64, request: Request, cancels: Cancels) {
    let service = &replies.service;
    let caller = &*replies.caller;
    let outcome: Outcome<Response> =
        match request {
            Request::Ping => Ok(Response::Pong {
                server: format!("lode {}", env!("CARGO_PKG_VERSION")),
            }),
            Request::Count { filter } => service
                .count(caller, filter)
                .await
                .map(|count| Response::Count { count }),
            Request::Histogram { filter, width } => service
                .histogram(caller, filter, width)
                .await
                .map(|h| Response::Histogram {
                    start: h.start,
                    width: h.width,
                    buckets: h.buckets,
                }),
            Request::Top { filter, field, k } => service
                .top(caller, filter, &field, k as usize)
                .await
                .map(|values| Response::Top { values }),
            Request::Stats => caller.require(Scope::Read).map(|()| Response::Stats {
                figures: service.figures(),
            }),
            Request::ReadBarrier => service.linearize().await.map(|()| Response::Done),
            Request::Query {
                filter,
                limit,
                cursor,
            } => match service.query(caller, filter, limit as usize, cursor).await {
                Ok(page) => {
                    let last = send_all_but_last(replies, id, page.records).await;
                    Ok(Response::PageEnd {
                        records: last,
                        next_cursor: page.next_cursor,
                    })
                }
                Err(failure) => Err(failure),
            },
            Request::Tail { query, from_seq } => {
                let cancelled = Arc::new(AtomicBool::new(false));
                lock(&cancels).insert(id, Arc::clone(&cancelled));
                let outcome = tail(replies, id, &query, from_seq, cancelled).await;
                lock(&cancels).remove(&id);
                outcome.map(|()| Response::Done)
            }
            Request::Cancel { .. } => return,
            _ => {
                let unknown = Failure::new(
                    ErrorCode::BadRequest,
                    "this server does not know that request",
                );
                service.metrics.failed(unknown.code);
                Err(unknown)
            }
        };
    replies
        .send(id, false, &outcome.unwrap_or_else(error))
        .await;
}

fn wire_records(records: Vec<Record>) -> Vec<WireRecord> {
    records
        .into_iter()
        .map(|r| WireRecord::new(r.seq, r.log))
        .collect()
}

/// Sends a page's records in frames of `RECORDS_PER_FRAME`, all but the
/// last, which is returned to travel in the final frame (for most pages,
/// the only frame).
async fn send_all_but_last(replies: &Replies, id: u64, records: Vec<Record>) -> Vec<WireRecord> {
    let mut chunks: Vec<Vec<WireRecord>> = Vec::new();
    let mut records = records.into_iter().peekable();
    while records.peek().is_some() {
        chunks.push(wire_records(
            records.by_ref().take(RECORDS_PER_FRAME).collect(),
        ));
    }
    let last = chunks.pop().unwrap_or_default();
    for chunk in chunks {
        if !replies
            .send(id, true, &Response::Records { records: chunk })
            .await
        {
            break;
        }
    }
    last
}

/// Pushes matching records as they become durable until cancelled or the
/// connection goes. Runs on a blocking thread: the engine's subscription
/// waits on a condition variable.
async fn tail(
    replies: &Replies,
    id: u64,
    query: &str,
    from_seq: Option<u64>,
    cancelled: Arc<AtomicBool>,
) -> Outcome<()> {
    let mut tail = replies.service.tail(&replies.caller, query, from_seq)?;
    let replies = replies.clone();
    tokio::task::spawn_blocking(move || {
        while !cancelled.load(Ordering::Acquire) {
            let mut batch = Vec::new();
            let mut wait = Duration::from_millis(100);
            while batch.len() < RECORDS_PER_FRAME {
                let next = tail.next_timeout(wait).map_err(Failure::from);
                if let Err(failure) = &next {
                    replies.service.metrics.failed(failure.code);
                }
                match next? {
                    Some(record) => batch.push(record),
                    None => break,
                }
                wait = Duration::ZERO;
            }
            if !batch.is_empty() {
                let response = Response::Records {
                    records: wire_records(std::mem::take(&mut batch)),
                };
                if !replies.blocking_send(id, true, &response) {
                    break;
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(Failure::new(ErrorCode::Internal, format!("tail: {e}"))))
}
