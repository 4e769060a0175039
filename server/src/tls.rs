//! The client listeners' TLS: the certificate they present (the
//! operator's, or a self-signed one made on first start into `DATA/tls/`
//! and reused after, so clients can pin it), the rustls configurations of
//! QUIC and of TLS over TCP (HTTP, the binary protocol, syslog), and the
//! certificates `lode cert server` and `lode cert client` issue.
//!
//! ```text
//! DIR/ca.pem, DIR/ca-key.pem          the CA of `lode cert` (keep the key off the servers)
//! DIR/server.pem, DIR/server-key.pem  a server's certificate (`lode cert server --name HOST`)
//! DIR/client-NAME.pem, -key.pem       a client of tenant NAME (`lode cert client --tenant NAME`)
//! ```

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use lode_replication::tls::{Readers, write_pem};

use crate::config::{Tls, TlsFiles};
use crate::{Error, Result};

/// ALPN of lode's binary protocol over QUIC.
pub const ALPN: &[u8] = b"lode/1";

/// The names a generated certificate is always valid for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn tls_error(path: &Path, reason: impl ToString) -> Error {
    Error::Tls {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate and key files to use: the operator's, or the generated
/// pair in `data/tls`, made now if missing (valid for loopback, this
/// machine's host name and `extra` names).
pub fn files(data: &Path, tls: &Tls, extra: &[String]) -> Result<TlsFiles> {
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            return Ok(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        (None, None) => {}
        _ => {
            return Err(Error::BadConfig(
                "tls.cert and tls.key go together: give both, or neither for a self-signed pair"
                    .into(),
            ));
        }
    }
    let dir = data.join("tls");
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(|e| tls_error(&dir, e))?;
    let mut names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    names.extend(extra.iter().cloned());
    names.retain(|n| !n.is_empty());
    names.dedup();
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| tls_error(&dir, e))?;
    write_private(&files.key, pair.key_pair.serialize_pem().as_bytes())?;
    write_public(&files.cert, pair.cert.pem().as_bytes())?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed certificate; clients trust it with --cert or --tls-ca");
    Ok(files)
}

fn write_public(path: &Path, bytes: &[u8]) -> Result<()> {
    write_pem(path, bytes, Readers::Anyone).map_err(|e| tls_error(path, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_pem(path, bytes, Readers::Owner).map_err(|e| tls_error(path, e))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_error(path, e))
}

/// The QUIC server configuration for these files.
pub fn quic_server(files: &TlsFiles) -> Result<quinn::ServerConfig> {
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| tls_error(&files.cert, e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| tls_error(&files.cert, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(lode_client::quic_transport()));
    Ok(config)
}

/// TLS over TCP (TLS 1.2 and 1.3) with these files: HTTP (`alpn`
/// `http/1.1`), the binary protocol, syslog. With `client_ca`, a client
/// may present a certificate it signed (checked in the handshake; one
/// without a certificate still connects, and must then give a token).
pub fn tcp_server(
    files: &TlsFiles,
    client_ca: Option<&Path>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls_error(&files.cert, e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| tls_error(ca, e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| tls_error(&files.cert, e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The tenant a client's verified certificate chain was issued for.
pub(crate) fn client_tenant(chain: &[CertificateDer<'_>]) -> Option<String> {
    lode_protocol::auth::cert_tenant(chain.first()?.as_ref())
}

fn ca_params() -> std::result::Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lode CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// The CA of `dir`, made now if missing: its certificate (rebuilt from
/// its key, the same subject) and its key.
fn ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair)> {
    std::fs::create_dir_all(dir).map_err(|e| tls_error(dir, e))?;
    let key_path = dir.join("ca-key.pem");
    let key = if key_path.exists() {
        let pem = std::fs::read_to_string(&key_path).map_err(|e| tls_error(&key_path, e))?;
        KeyPair::from_pem(&pem).map_err(|e| tls_error(&key_path, e))?
    } else {
        let key = KeyPair::generate().map_err(|e| tls_error(dir, e))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        key
    };
    let cert = ca_params()
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| tls_error(&key_path, e))?;
    let ca_path = dir.join("ca.pem");
    if !ca_path.exists() {
        write_public(&ca_path, cert.pem().as_bytes())?;
    }
    Ok((cert, key))
}

/// Issues a certificate signed by the CA of `dir` (made if missing):
/// `names` (DNS names or IP addresses) for a server, or a client's common
/// name; writes `dir/NAME.pem` and `dir/NAME-key.pem` (0600).
fn issue(
    dir: &Path,
    file: &str,
    names: Vec<String>,
    common_name: &str,
    server: bool,
) -> Result<TlsFiles> {
    let (ca_cert, ca_key) = ca(dir)?;
    let mut params = CertificateParams::new(names).map_err(|e| tls_error(dir, e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().map_err(|e| tls_error(dir, e))?;
    let cert = params
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(|e| tls_error(dir, e))?;
    let files = TlsFiles {
        cert: dir.join(format!("{file}.pem")),
        key: dir.join(format!("{file}-key.pem")),
    };
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    write_public(&files.cert, cert.pem().as_bytes())?;
    Ok(files)
}

/// `lode cert server --name HOST ...`: a server certificate valid for
/// `names` (and loopback), signed by the CA of `dir`.
pub fn issue_server(dir: &Path, names: &[String]) -> Result<TlsFiles> {
    let mut all: Vec<String> = names.to_vec();
    all.extend(NAMES.iter().map(|n| (*n).to_owned()));
    all.dedup();
    let first = names.first().cloned().unwrap_or_else(|| "localhost".into());
    issue(dir, "server", all, &first, true)
}

/// `lode cert client --tenant NAME`: a client certificate of tenant
/// `tenant` (`CN=tenant=NAME`), signed by the CA of `dir`.
pub fn issue_client(dir: &Path, tenant: &str) -> Result<TlsFiles> {
    lode_protocol::auth::check_tenant(tenant).map_err(Error::BadConfig)?;
    let cn = format!("{}{tenant}", lode_protocol::auth::CERT_TENANT_PREFIX);
    issue(dir, &format!("client-{tenant}"), Vec::new(), &cn, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_name_their_tenant_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let server = issue_server(dir.path(), &["logs.example".into()]).unwrap();
        let client = issue_client(dir.path(), "team-a").unwrap();
        let chain = read_certs(&client.cert).unwrap();
        assert_eq!(client_tenant(&chain).as_deref(), Some("team-a"));
        assert_eq!(client_tenant(&read_certs(&server.cert).unwrap()), None);
        for key in [&server.key, &client.key, &dir.path().join("ca-key.pem")] {
            let mode = std::fs::metadata(key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        assert!(issue_client(dir.path(), "Team A").is_err());
        // The same CA signs both: a server trusting ca.pem takes the client.
        assert!(tcp_server(&server, Some(&dir.path().join("ca.pem")), &[b"http/1.1"]).is_ok());
    }
}
