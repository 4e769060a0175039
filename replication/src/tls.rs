//! Mutual TLS between nodes under a cluster CA.
//!
//! `lode cluster init` makes one CA and one certificate per node, valid for
//! the name `node-ID` (and the addresses given). A node accepts a peer only
//! if the peer's certificate is signed by the CA, and it checks that the
//! node it dials presents the certificate of the id it dialled: a machine
//! that is not in the cluster, or one holding another node's address, is
//! refused during the handshake.
//!
//! ```text
//! DIR/ca.pem, DIR/ca-key.pem            the cluster CA (keep the key off the nodes)
//! DIR/node-ID.pem, DIR/node-ID-key.pem  each node's certificate and key
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use lode_replication_wire::NodeId;

/// ALPN of the protocol between nodes.
pub const ALPN: &[u8] = b"lode-raft/1";

/// Why the cluster's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct TlsError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The name a node's certificate is valid for.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// Whether `cert` (verified under the cluster CA by the handshake) is
/// node `id`'s: valid for the name `node-ID`.
pub fn is_node_cert(cert: &CertificateDer<'_>, id: NodeId) -> bool {
    let Ok(name) = rustls::pki_types::ServerName::try_from(node_name(id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The files of one node's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodeTlsFiles {
    /// The files `lode cluster init` writes for node `id` in `dir`.
    pub fn in_dir(dir: &Path, id: NodeId) -> NodeTlsFiles {
        NodeTlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{}.pem", node_name(id))),
            key: dir.join(format!("{}-key.pem", node_name(id))),
        }
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "lode cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Who may read a PEM file [`write_pem`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// A certificate: anyone (0644 under the usual umask).
    Anyone,
    /// A private key: its owner only (0600), from its first byte.
    Owner,
}

/// Writes a PEM file through a temporary file and a rename, so a crash
/// never leaves half a file.
pub fn write_pem(path: &Path, bytes: &[u8], readers: Readers) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mode = match readers {
        Readers::Anyone => 0o644,
        Readers::Owner => 0o600,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // An earlier file of the same name keeps its mode on open: set it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

fn write_file(path: &Path, bytes: &[u8], readers: Readers) -> Result<(), TlsError> {
    write_pem(path, bytes, readers).map_err(|e| err(path, e))
}

/// Makes a cluster CA in `dir` (refusing to replace one), then a
/// certificate for each node: `(id, extra names)`, the extra names being
/// the hosts or IP addresses it is reached at.
pub fn init_cluster(dir: &Path, nodes: &[(NodeId, Vec<String>)]) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let ca_path = dir.join("ca.pem");
    if ca_path.exists() {
        return Err(err(
            &ca_path,
            "a cluster CA is already there; add nodes with `lode cluster cert`",
        ));
    }
    let key = KeyPair::generate().map_err(|e| err(dir, e))?;
    let ca = ca_params()
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| err(dir, e))?;
    write_file(
        &dir.join("ca-key.pem"),
        key.serialize_pem().as_bytes(),
        Readers::Owner,
    )?;
    write_file(&ca_path, ca.pem().as_bytes(), Readers::Anyone)?;
    for (id, names) in nodes {
        issue_node_cert(dir, *id, names)?;
    }
    Ok(())
}

/// Issues (or replaces) node `id`'s certificate, signed by the CA in `dir`.
pub fn issue_node_cert(dir: &Path, id: NodeId, names: &[String]) -> Result<NodeTlsFiles, TlsError> {
    let ca_key_path = dir.join("ca-key.pem");
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| err(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| err(&ca_key_path, e))?;
    // The same subject and key as the CA certificate on disk: what a peer
    // checks a signature against.
    let ca = ca_params()
        .and_then(|p| p.self_signed(&ca_key))
        .map_err(|e| err(&ca_key_path, e))?;
    let mut all_names = vec![node_name(id)];
    all_names.extend(names.iter().cloned());
    let mut params = CertificateParams::new(all_names).map_err(|e| err(dir, e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, node_name(id));
    let key = KeyPair::generate().map_err(|e| err(dir, e))?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| err(dir, e))?;
    let files = NodeTlsFiles::in_dir(dir, id);
    write_file(&files.key, key.serialize_pem().as_bytes(), Readers::Owner)?;
    write_file(&files.cert, cert.pem().as_bytes(), Readers::Anyone)?;
    Ok(files)
}

/// One node's TLS identity, loaded: what its QUIC endpoint serves and
/// dials with.
#[derive(Debug)]
pub struct NodeTls {
    roots: Arc<rustls::RootCertStore>,
    cert: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    path: PathBuf,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path, e))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate in the file"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    pub fn load(files: &NodeTlsFiles) -> Result<NodeTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots.add(ca).map_err(|e| err(&files.ca, e))?;
        }
        let cert = read_certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err(&files.key, e))?;
        Ok(NodeTls {
            roots: Arc::new(roots),
            cert,
            key,
            path: files.cert.clone(),
        })
    }

    /// The endpoint's server side: peers must present a CA-signed
    /// certificate.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::clone(&self.roots),
            provider(),
        )
        .build()
        .map_err(|e| err(&self.path, e))?;
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&self.path, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert.clone(), self.key.clone_key())
            .map_err(|e| err(&self.path, e))?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| err(&self.path, e))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }

    /// The endpoint's client side: presents this node's certificate, and
    /// trusts only certificates of the cluster CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| err(&self.path, e))?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_auth_cert(self.cert.clone(), self.key.clone_key())
            .map_err(|e| err(&self.path, e))?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| err(&self.path, e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport()));
        Ok(config)
    }
}

/// QUIC transport between nodes: the client protocol's settings (large
/// windows), with a keep-alive well under a 5 s idle timeout so a quiet
/// cluster keeps its connections, and an initial round-trip estimate for
/// a LAN (10 ms, not quinn's 333 ms): before the first sample the loss
/// timers, and a closed connection's draining (three of them), follow it.
fn transport() -> quinn::TransportConfig {
    let mut t = lode_client::quic_transport();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    // A peer that died without closing (SIGKILL, power) is given up on
    // after this, and dialled afresh.
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(5_000).into()));
    t.initial_rtt(std::time::Duration::from_millis(10));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn handshake(server: &NodeTls, client: &NodeTls, dial: NodeId) -> Result<(), String> {
        let listener = lode_client::quic_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            Some(server.server_config().unwrap()),
        )
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let incoming = listener.accept().await.ok_or("no connection")?;
            incoming.await.map(|_| ()).map_err(|e| e.to_string())
        });
        let dialer = lode_client::quic_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let connecting = dialer
            .connect_with(client.client_config().unwrap(), addr, &node_name(dial))
            .unwrap();
        let dialled = tokio::time::timeout(std::time::Duration::from_secs(5), connecting)
            .await
            .map_err(|_| "dial timed out".to_owned())?
            .map_err(|e| e.to_string());
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(5), accept)
            .await
            .map_err(|_| "accept timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        // Mutual TLS: the server's verdict on the client's certificate
        // may arrive after the client considers itself connected.
        dialled.map(|_| ())?;
        accepted
    }

    #[tokio::test]
    async fn only_peers_of_the_cluster_ca_with_the_dialled_identity_connect() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
        init_cluster(&ours, &[(1, vec![]), (2, vec![]), (3, vec![])]).unwrap();
        init_cluster(&theirs, &[(2, vec![])]).unwrap();
        let load = |d: &Path, id| NodeTls::load(&NodeTlsFiles::in_dir(d, id)).unwrap();
        let (node1, node2) = (load(&ours, 1), load(&ours, 2));
        let outsider = load(&theirs, 2);

        handshake(&node1, &node2, 1)
            .await
            .expect("a peer of the same CA connects");
        let refused = handshake(&node1, &outsider, 1).await;
        assert!(refused.is_err(), "a certificate of another CA is refused");
        let wrong_identity = handshake(&node1, &node2, 3).await;
        assert!(
            wrong_identity.is_err(),
            "dialling node 3 and meeting node 1's certificate fails"
        );
        assert!(
            init_cluster(&ours, &[]).is_err(),
            "an existing CA is never replaced"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        for key in [ours.join("ca-key.pem"), NodeTlsFiles::in_dir(&ours, 2).key] {
            assert_eq!(mode(key), 0o600, "private keys are their owner's only");
        }
    }
}
