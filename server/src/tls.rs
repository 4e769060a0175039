//! The QUIC listener's certificate: the operator's, or a self-signed one
//! generated on first start into `DATA/tls/` and reused after, so clients
//! can pin it (`lode --cert DATA/tls/cert.pem`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;
use crate::{Error, Result};

/// ALPN of lode's binary protocol over QUIC.
pub const ALPN: &[u8] = b"lode/1";

/// The names a generated certificate is valid for.
const NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn tls_error(path: &Path, reason: impl ToString) -> Error {
    Error::Tls {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The certificate and key files to use: the operator's, or the generated
/// pair in `data/tls`, made now if missing.
pub fn files(data: &Path, given: Option<&TlsFiles>) -> Result<TlsFiles> {
    if let Some(given) = given {
        return Ok(given.clone());
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
    let names: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
    let pair = rcgen::generate_simple_self_signed(names).map_err(|e| tls_error(&dir, e))?;
    write_new(&files.key, pair.key_pair.serialize_pem().as_bytes())?;
    write_new(&files.cert, pair.cert.pem().as_bytes())?;
    tracing::info!(cert = %files.cert.display(), "generated a self-signed certificate for QUIC");
    Ok(files)
}

/// Writes through a temporary file and a rename, so a crash never leaves
/// half a key.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| tls_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| tls_error(path, e))
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

/// The QUIC server configuration for these files.
pub fn quic_server(files: &TlsFiles) -> Result<quinn::ServerConfig> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_error(&files.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&files.cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_error(&files.cert, e))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .map_err(|e| tls_error(&files.cert, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(lode_client::quic_transport()));
    Ok(config)
}
