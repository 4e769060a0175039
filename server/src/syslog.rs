//! Syslog listeners: TCP (octet-counted or newline framed, per message)
//! and UDP (one message per datagram). Messages read together are
//! appended as one batch; the next read waits for that append to be
//! durable, so a fast sender is slowed by TCP rather than buffered here.
//!
//! Plain syslog carries no credential: where auth is required, only
//! senders in `syslog_allow`'s networks are heard (their records go to
//! `syslog_tenant`); the others' connections are closed and their
//! datagrams dropped, and counted.

use std::sync::Arc;

use lode_engine::{LogRecord, now_ns};
use lode_protocol::syslog;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

use crate::auth::Caller;
use crate::metrics::Source;
use crate::service::Service;

/// Most messages appended as one batch.
const BATCH: usize = 1000;

pub(crate) async fn accept_tcp(service: Arc<Service>, listener: TcpListener) {
    let connections = Arc::new(Semaphore::new(service.limits.max_connections.max(1)));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(caller) = service.syslog_caller(peer.ip()) else {
                    tracing::debug!(%peer, "syslog connection refused: not in syslog_allow");
                    continue;
                };
                // Over max_connections, the sender is disconnected.
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    tracing::warn!(%peer, "syslog connection refused: max_connections reached");
                    continue;
                };
                let service = Arc::clone(&service);
                tokio::spawn(async move {
                    serve_tcp(service, caller, stream).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "syslog accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Syslog over TLS (RFC 5425): a sender is heard as the tenant of its
/// client certificate (`lode cert client --tenant NAME`, checked against
/// `tls.client_ca` in the handshake), or, without one, as plain syslog is
/// (`syslog_allow`).
pub(crate) async fn accept_tls(
    service: Arc<Service>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake: std::time::Duration,
) {
    let connections = Arc::new(Semaphore::new(service.limits.max_connections.max(1)));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "syslog (tls) accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "syslog connection refused: max_connections reached");
            continue;
        };
        let (service, acceptor) = (Arc::clone(&service), acceptor.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                _ => return,
            };
            let certified = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(crate::tls::client_tenant);
            let caller = match certified {
                Some(tenant) => Some(service.certified(&tenant)),
                None => service.syslog_caller(peer.ip()),
            };
            if let Some(caller) = caller {
                serve_tcp(service, caller, tls).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp<S>(service: Arc<Service>, caller: Caller, mut stream: S)
where
    S: tokio::io::AsyncRead + Unpin,
{
    let max = service.limits.max_syslog_bytes;
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let now = now_ns();
        let mut records = Vec::new();
        let mut used = 0;
        let mut broken = false;
        loop {
            match syslog::split_frame(buf.get(used..).unwrap_or_default(), max) {
                Ok(Some((message, len))) => {
                    if !message.is_empty() {
                        records.push(syslog::parse(message, now));
                    }
                    used += len;
                }
                Ok(None) => break,
                Err(reason) => {
                    tracing::warn!(%reason, "closing a syslog connection");
                    service.metrics.rejected(Source::Syslog, 1);
                    broken = true;
                    break;
                }
            }
        }
        buf.drain(..used);
        if n == 0 && !broken && !buf.is_empty() {
            // The last message of a stream may lack its newline.
            records.push(syslog::parse(&buf, now));
        }
        append(&service, &caller, records).await;
        if n == 0 || broken {
            return;
        }
    }
}

pub(crate) async fn serve_udp(service: Arc<Service>, socket: UdpSocket) {
    let mut datagram = vec![0u8; 64 << 10];
    loop {
        let mut records = Vec::new();
        let (n, from) = match socket.recv_from(&mut datagram).await {
            Ok(received) => received,
            Err(e) => {
                // A persistent error must not spin the loop.
                tracing::warn!(error = %e, "syslog udp receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = now_ns();
        let Some(caller) = service.syslog_caller(from.ip()) else {
            continue;
        };
        records.push(syslog::parse(datagram.get(..n).unwrap_or_default(), now));
        // Take what else already arrived from senders heard alike,
        // without waiting.
        while records.len() < BATCH {
            match socket.try_recv_from(&mut datagram) {
                Ok((n, from)) => {
                    if service.syslog_caller(from.ip()).as_ref() == Some(&caller) {
                        records.push(syslog::parse(datagram.get(..n).unwrap_or_default(), now));
                    }
                }
                Err(_) => break,
            }
        }
        append(&service, &caller, records).await;
    }
}

async fn append(service: &Service, caller: &Caller, records: Vec<LogRecord>) {
    if records.is_empty() {
        return;
    }
    service
        .metrics
        .received(Source::Syslog, records.len() as u64);
    for batch in records.chunks(BATCH) {
        if let Err(failure) = service.append_records(caller, batch.to_vec(), None).await {
            tracing::error!(%failure, "syslog append failed");
        }
    }
}
