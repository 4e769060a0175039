//! One protocol session over any byte stream: a writer task, a reader
//! task that routes response frames to their requests by id, and the
//! in-flight limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use lode_protocol::wire::{
    self, FRAME_HEADER, HELLO_LEN, HelloStatus, Kind, Request, Response, VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use lode_codec::{EncodedBatch, FrameKind, HEADER_LEN};

use crate::{ClientError, ClientOptions, ErrorCode, Result};

type Routed = (Response, bool);

#[derive(Debug, Default)]
struct Routes {
    pending: HashMap<u64, mpsc::UnboundedSender<Routed>>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

pub(crate) struct Connection {
    /// Frames to write: the bytes and where the frame starts in them.
    tx: mpsc::Sender<(Vec<u8>, usize)>,
    routes: Arc<Mutex<Routes>>,
    next_id: AtomicU64,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    tasks: Vec<JoinHandle<()>>,
    kept: Option<Box<dyn std::any::Any + Send + Sync>>,
    tenant: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("available_in_flight", &self.in_flight.available_permits())
            .finish_non_exhaustive()
    }
}

fn lock(routes: &Mutex<Routes>) -> MutexGuard<'_, Routes> {
    routes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The answer frames of one request.
#[derive(Debug)]
pub(crate) struct Stream {
    id: u64,
    rx: mpsc::UnboundedReceiver<Routed>,
    routes: Arc<Mutex<Routes>>,
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The next frame: a response and whether more follow.
    pub(crate) async fn next(&mut self) -> Result<Routed> {
        match self.rx.recv().await {
            Some(routed) => Ok(routed),
            None => Err(ClientError::Closed(lock(&self.routes).closed.clone())),
        }
    }
}

impl Connection {
    /// Says hello and starts the reader and writer.
    pub(crate) async fn start<R, W>(
        reader: R,
        writer: W,
        options: &ClientOptions,
    ) -> Result<Connection>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = BufReader::with_capacity(256 << 10, reader);
        // Frames larger than the buffer bypass it: an append batch goes to the
        // socket without another copy.
        let mut writer = BufWriter::with_capacity(64 << 10, writer);
        let mut greeting = wire::encode_hello(VERSION, HelloStatus::Ok).to_vec();
        greeting.extend_from_slice(&wire::encode_credentials(
            options.token.as_deref().unwrap_or_default(),
            options.tenant.as_deref().unwrap_or_default(),
        )?);
        let hello = async {
            writer.write_all(&greeting).await?;
            writer.flush().await?;
            let mut answer = [0u8; HELLO_LEN];
            reader.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(options.connect_timeout, hello)
            .await
            .map_err(|_| ClientError::io("hello", "the server did not answer in time"))?
            .map_err(|e| ClientError::io("hello", e))?;
        match wire::decode_hello(&answer)? {
            (VERSION, HelloStatus::Ok) => {}
            (_, HelloStatus::Unauthorized) => {
                return Err(ClientError::Server {
                    code: Some(ErrorCode::Unauthorized),
                    message: "the server wants a valid token (--token, or LODE_TOKEN)".into(),
                });
            }
            (_, HelloStatus::Forbidden) => {
                return Err(ClientError::Server {
                    code: Some(ErrorCode::Forbidden),
                    message: "the token does not allow the tenant asked for".into(),
                });
            }
            (peer, _) => {
                return Err(ClientError::Protocol(wire::WireError::UnsupportedVersion {
                    peer,
                }));
            }
        }
        let session = async {
            let mut prefix = [0u8; 2];
            reader.read_exact(&mut prefix).await?;
            let len = wire::str16_len(prefix)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let mut tenant = vec![0u8; len];
            reader.read_exact(&mut tenant).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&tenant).into_owned())
        };
        let tenant = tokio::time::timeout(options.connect_timeout, session)
            .await
            .map_err(|_| ClientError::io("hello", "the server did not answer in time"))?
            .map_err(|e| ClientError::io("hello", e))?;
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (tx, rx) = mpsc::channel(256);
        let tasks = vec![
            tokio::spawn(write_loop(writer, rx)),
            tokio::spawn(read_loop(
                reader,
                Arc::clone(&routes),
                options.max_frame_bytes,
            )),
        ];
        Ok(Connection {
            tx,
            routes,
            next_id: AtomicU64::new(1),
            in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            max_in_flight: options.max_in_flight.max(1),
            tasks,
            kept: None,
            tenant,
        })
    }

    /// The tenant the server said this session writes to.
    pub(crate) fn tenant(&self) -> &str {
        &self.tenant
    }

    pub(crate) fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Keeps `value` alive as long as the connection (a QUIC endpoint).
    pub(crate) fn keep(&mut self, value: impl std::any::Any + Send + Sync) {
        self.kept = Some(Box::new(value));
    }

    /// Sends `bytes[start..]`, a frame whose header (its first
    /// `FRAME_HEADER` bytes) is filled in here with a fresh id.
    async fn send(&self, kind: Kind, mut bytes: Vec<u8>, start: usize) -> Result<Stream> {
        let payload_len = bytes
            .len()
            .checked_sub(start + FRAME_HEADER)
            .and_then(|len| u32::try_from(len).ok())
            .ok_or_else(|| ClientError::Encode("frame buffer too short or too long".into()))?;
        let permit = Arc::clone(&self.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed(None))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut header = Vec::with_capacity(FRAME_HEADER);
        wire::encode_header(kind, 0, id, payload_len, &mut header);
        if let Some(room) = bytes.get_mut(start..start + FRAME_HEADER) {
            room.copy_from_slice(&header);
        }
        let (route, rx) = mpsc::unbounded_channel();
        {
            let mut routes = lock(&self.routes);
            if let Some(reason) = &routes.closed {
                return Err(ClientError::Closed(Some(reason.clone())));
            }
            routes.pending.insert(id, route);
        }
        if self.tx.send((bytes, start)).await.is_err() {
            lock(&self.routes).pending.remove(&id);
            return Err(ClientError::Closed(lock(&self.routes).closed.clone()));
        }
        Ok(Stream {
            id,
            rx,
            routes: Arc::clone(&self.routes),
            _permit: permit,
        })
    }

    /// Sends a batch without copying it: the wire header goes at the end
    /// of the room the batch reserved for the WAL's longer one.
    pub(crate) async fn send_append(&self, batch: EncodedBatch) -> Result<Stream> {
        let start = HEADER_LEN - FRAME_HEADER;
        let kind = match batch.kind() {
            FrameKind::KeyedBatch => Kind::KeyedAppend,
            _ => Kind::Append,
        };
        self.send(kind, batch.into_reserved(), start).await
    }

    pub(crate) async fn send_request(&self, request: &Request) -> Result<Stream> {
        let mut frame = Vec::new();
        wire::encode_request(0, request, &mut frame)?;
        self.send(Kind::Request, frame, 0).await
    }

    /// Asks the server to end stream `id`, without waiting.
    pub(crate) fn cancel(&self, id: u64) {
        lock(&self.routes).pending.remove(&id);
        let mut frame = Vec::new();
        if wire::encode_request(id, &Request::Cancel { id }, &mut frame).is_ok() {
            let _ = self.tx.try_send((frame, 0));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: BufWriter<W>,
    mut rx: mpsc::Receiver<(Vec<u8>, usize)>,
) {
    while let Some((bytes, start)) = rx.recv().await {
        if writer
            .write_all(bytes.get(start..).unwrap_or_default())
            .await
            .is_err()
        {
            return;
        }
        while let Ok((bytes, start)) = rx.try_recv() {
            if writer
                .write_all(bytes.get(start..).unwrap_or_default())
                .await
                .is_err()
            {
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
    mut reader: BufReader<R>,
    routes: Arc<Mutex<Routes>>,
    max_frame: u32,
) {
    let reason = loop {
        let mut head = [0u8; FRAME_HEADER];
        if let Err(e) = reader.read_exact(&mut head).await {
            break format!("the server closed the connection ({e})");
        }
        let header = match wire::decode_header(&head, max_frame) {
            Ok(header) => header,
            Err(e) => break format!("bad frame from the server: {e}"),
        };
        let mut payload = vec![0u8; header.len as usize];
        if let Err(e) = reader.read_exact(&mut payload).await {
            break format!("the server closed the connection ({e})");
        }
        let response = match wire::decode_response(&payload) {
            Ok(response) => response,
            Err(e) => break format!("bad frame from the server: {e}"),
        };
        let more = header.flags & wire::MORE != 0;
        if header.id == 0 {
            // A connection-level error (busy, bad frame): it ends them all.
            break match response {
                Response::Error { message, .. } => message,
                other => format!("unexpected message {other:?}"),
            };
        }
        let mut routes = lock(&routes);
        let delivered = routes
            .pending
            .get(&header.id)
            .is_some_and(|route| route.send((response, more)).is_ok());
        if !more || !delivered {
            routes.pending.remove(&header.id);
        }
    };
    let mut routes = lock(&routes);
    routes.closed = Some(reason);
    routes.pending.clear();
}
