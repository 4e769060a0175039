//! The HTTP API of lode servers, as the CLI's cluster and token commands
//! ask it: plain HTTP/1.1, or HTTPS when the address says `https://` or a
//! CA is given (rustls over a blocking socket: no client library for a
//! few calls), with the token when there is one.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::CliError;

/// Which servers to ask and how.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Api {
    /// The servers' HTTP addresses, HOST:PORT or https://HOST:PORT,
    /// comma-separated (a cluster's nodes: the leader among them is asked
    /// where a change must be).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7401",
        env = "LODE_HTTP"
    )]
    pub(crate) http: Vec<String>,
    /// The token to act with, where the servers ask for one (an admin
    /// token for tokens and the cluster's membership).
    #[arg(long, env = "LODE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The CA (PEM) that signed the servers' HTTPS certificate: talk
    /// HTTPS and trust only it (`lode cert server` made a self-signed one
    /// for trials: give that file).
    #[arg(long, env = "LODE_TLS_CA")]
    pub(crate) tls_ca: Option<PathBuf>,
}

/// An address without its scheme, and whether it asked for TLS.
fn split_scheme(addr: &str) -> (&str, bool) {
    match addr.strip_prefix("https://") {
        Some(rest) => (rest.trim_end_matches('/'), true),
        None => (
            addr.strip_prefix("http://")
                .unwrap_or(addr)
                .trim_end_matches('/'),
            false,
        ),
    }
}

impl Api {
    /// One request to `addr`, answered within `wait`: the status code and
    /// the JSON body.
    pub(crate) fn request(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
        wait: Duration,
    ) -> Result<(u16, Value), CliError> {
        let (host_port, https) = split_scheme(addr);
        let fail = |e: &dyn std::fmt::Display| CliError::new(format!("{addr}: {e}"));
        let sock = host_port
            .to_socket_addrs()
            .map_err(|e| fail(&e))?
            .next()
            .ok_or_else(|| fail(&"no address"))?;
        let tcp =
            TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| fail(&e))?;
        tcp.set_read_timeout(Some(wait)).map_err(|e| fail(&e))?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        let mut response = Vec::new();
        if https || self.tls_ca.is_some() {
            let host = host_port
                .rsplit_once(':')
                .map_or(host_port, |(host, _)| host)
                .trim_matches(['[', ']']);
            let mut tls = self.tls_stream(host, tcp)?;
            tls.write_all(head.as_bytes()).map_err(|e| fail(&e))?;
            read_all(&mut tls, &mut response).map_err(|e| fail(&e))?;
        } else {
            let mut tcp = tcp;
            tcp.write_all(head.as_bytes()).map_err(|e| fail(&e))?;
            read_all(&mut tcp, &mut response).map_err(|e| fail(&e))?;
        }
        let response = String::from_utf8_lossy(&response);
        let code = response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| fail(&"not an HTTP answer"))?;
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json = serde_json::from_str(body)
            .map_err(|e| CliError::new(format!("{addr} answered {code}, not JSON: {e}")))?;
        Ok((code, json))
    }

    /// A TLS stream to `host` over `tcp`, trusting only `--tls-ca`.
    fn tls_stream(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, CliError> {
        let ca = self.tls_ca.as_ref().ok_or_else(|| {
            CliError::new("an https:// address needs --tls-ca FILE: the CA that signed the server's certificate")
        })?;
        let config = lode_client::tls_client_config(ca)
            .map_err(|e| CliError::new(format!("{}: {e}", ca.display())))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| CliError::new(format!("{host}: {e}")))?;
        let connection = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| CliError::new(format!("{host}: {e}")))?;
        Ok(rustls::StreamOwned::new(connection, tcp))
    }
}

/// Reads to the end of the stream; a TLS peer that closes without
/// `close_notify` after a whole answer is not an error.
fn read_all(stream: &mut impl Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    match stream.read_to_end(out) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => Ok(()),
        Err(e) => Err(e),
    }
}
