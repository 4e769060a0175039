//! The HTTP listener's accept loop: plain TCP or TLS, each connection
//! served by hyper's HTTP/1 with deadlines a slow client cannot stretch.
//!
//! - Headers: hyper's `header_read_timeout`, whose clock starts when the
//!   connection is served and again each time a keep-alive connection
//!   goes idle, so it also bounds idle connections.
//! - Bodies: the whole body must arrive within `body_timeout_ms` of the
//!   request's start (a client dripping one byte at a time is cut off).
//! - TLS: the handshake must end within the header timeout.
//!
//! Every request carries its [`Peer`] in its extensions. WebSocket upgrades (Loki's tail) are served.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use futures_core::Stream;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::{Sleep, sleep, timeout};
use tower_service::Service as _;

/// The other end of a connection, in every request's extensions.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    /// The tenant of the client certificate it presented over TLS
    /// (verified against `tls.client_ca` in the handshake), if any.
    pub(crate) certified: Option<String>,
}

/// How long a client may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub(crate) header: Duration,
    pub(crate) body: Duration,
}

/// Serves `app` on every connection `listener` accepts, over TLS when
/// `tls` is given, until the task is aborted.
pub(crate) async fn serve_http(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    deadlines: Deadlines,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header)
        .keep_alive(true);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "http accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, builder, acceptor) = (app.clone(), builder.clone(), acceptor.clone());
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let peer = Peer {
                    addr,
                    certified: None,
                };
                return serve_connection(&builder, tcp, peer, app, deadlines).await;
            };
            match timeout(deadlines.header, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let certified = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(crate::tls::client_tenant);
                    let peer = Peer { addr, certified };
                    serve_connection(&builder, tls, peer, app, deadlines).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "tls handshake failed"),
                Err(_) => tracing::debug!(%addr, "tls handshake timed out"),
            }
        });
    }
}

async fn serve_connection<I>(
    builder: &http1::Builder,
    io: I,
    peer: Peer,
    app: Router,
    deadlines: Deadlines,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        // `into_parts` keeps hyper's upgrade handle among the extensions.
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(peer.addr));
        parts.extensions.insert(peer.clone());
        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            Body::from_stream(BodyDeadline {
                inner: Body::new(body).into_data_stream(),
                deadline: Box::pin(sleep(deadlines.body)),
                limit: deadlines.body,
            })
        };
        Router::clone(&app).call(hyper::Request::from_parts(parts, body))
    });
    let connection = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    if let Err(e) = connection.await {
        tracing::debug!(%addr, error = %e, timeout = e.is_timeout(), "http connection ended");
    }
}

/// A request body that fails once `limit` has passed since the request
/// started.
struct BodyDeadline {
    inner: axum::body::BodyDataStream,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, axum::BoxError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            return Poll::Ready(item.map(|chunk| chunk.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                "the request body did not arrive within limits.body_timeout_ms = {}",
                this.limit.as_millis()
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }
}
