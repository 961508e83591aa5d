//! TLS for `wss://` and `https://`: rustls (ring, no system library), the
//! public web roots, optional private CAs, and one-line error causes.
//!
//! Certificates are always verified: there is deliberately no way to turn
//! verification off, only to trust another CA.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// The environment variable the `hopeflow` tool reads a private CA from.
pub const CA_CERT_ENV: &str = "HOPEFLOW_CA_CERT";

/// What to trust: the public web roots, plus any private CAs added.
#[derive(Clone)]
pub struct Trust {
    config: Arc<ClientConfig>,
    /// The private CAs added, kept to rebuild `config` when one more comes
    /// (rustls does not hand back a config's roots).
    private: Vec<CertificateDer<'static>>,
    ca_files: Vec<PathBuf>,
}

/// A private CA that could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The file could not be read.
    Read { path: PathBuf, why: String },
    /// The file holds no PEM certificate, or a malformed one.
    NoCertificate { path: PathBuf, why: String },
    /// rustls refused a certificate as a trust anchor.
    Rejected { path: PathBuf, why: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, why } => {
                write!(f, "cannot read CA certificate {}: {why}", path.display())
            }
            TlsError::NoCertificate { path, why } => write!(
                f,
                "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\"): {why}",
                path.display()
            ),
            TlsError::Rejected { path, why } => {
                write!(f, "CA certificate {} is not usable: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for TlsError {}

impl Default for Trust {
    fn default() -> Trust {
        Trust::public_roots()
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trust")
            .field("ca_files", &self.ca_files)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// The public web roots (Mozilla's, built in: no system store needed).
    pub fn public_roots() -> Trust {
        Trust {
            config: config(public_roots()),
            private: Vec::new(),
            ca_files: Vec::new(),
        }
    }

    /// The public roots plus every certificate in the PEM file at `path`.
    pub fn with_ca_file(path: impl AsRef<Path>) -> Result<Trust, TlsError> {
        Trust::public_roots().add_ca_file(path)
    }

    /// `with_ca_file` of `HOPEFLOW_CA_CERT` when it is set and not empty,
    /// else the public roots.
    pub fn from_env() -> Result<Trust, TlsError> {
        match std::env::var_os(CA_CERT_ENV).filter(|v| !v.is_empty()) {
            Some(path) => Trust::with_ca_file(path),
            None => Ok(Trust::public_roots()),
        }
    }

    /// Also trusts every certificate in the PEM file at `path`.
    pub fn add_ca_file(mut self, path: impl AsRef<Path>) -> Result<Trust, TlsError> {
        let path = path.as_ref().to_path_buf();
        let pem = std::fs::read(&path).map_err(|e| TlsError::Read {
            path: path.clone(),
            why: e.to_string(),
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::NoCertificate {
                path: path.clone(),
                why: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path,
                why: "the file is empty of certificates".into(),
            });
        }
        let mut roots = public_roots();
        for cert in self.private.iter().chain(&certs) {
            roots.add(cert.clone()).map_err(|e| TlsError::Rejected {
                path: path.clone(),
                why: e.to_string(),
            })?;
        }
        self.config = config(roots);
        self.private.extend(certs);
        self.ca_files.push(path);
        Ok(self)
    }

    /// The rustls configuration, for the socket and HTTP clients.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The private CA files trusted besides the public roots.
    pub fn ca_files(&self) -> &[PathBuf] {
        &self.ca_files
    }
}

fn public_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    roots
}

fn config(roots: RootCertStore) -> Arc<ClientConfig> {
    // The provider is named, not taken from the process default, so another
    // crate enabling a second rustls provider cannot make this ambiguous.
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions();
    let mut config = match builder {
        Ok(builder) => builder.with_root_certificates(roots).with_no_client_auth(),
        // ring supports the safe defaults; this arm cannot be reached.
        Err(_) => ClientConfig::builder()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One line naming why a connection failed, most useful cause first, from an
/// error and its `source()` chain.
///
/// TLS and socket errors are recognised and said plainly (an untrusted
/// certificate points at `--ca-cert`); anything else is the chain's messages
/// joined with `: `, repeats dropped.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut chain: Vec<String> = Vec::new();
    let mut plain: Option<String> = None;
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if plain.is_none() {
            plain = plain_cause(e);
        }
        let text = e.to_string();
        // Wrappers often repeat their source's text inside their own.
        if !chain.iter().any(|seen| seen.contains(&text)) {
            chain.push(text);
        }
        current = e.source();
    }
    match plain {
        Some(plain) => plain,
        None => chain.join(": "),
    }
}

/// A plain statement of `err` when it is a TLS or socket error we know.
fn plain_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(tls) = err.downcast_ref::<rustls::Error>() {
        return Some(tls_cause(tls));
    }
    let io = err.downcast_ref::<std::io::Error>()?;
    // TLS errors come wrapped in one or more io::Errors, whose `source()`
    // skips the wrapped error itself.
    let mut layer = io;
    while let Some(inner) = layer.get_ref() {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls_cause(tls));
        }
        match inner.downcast_ref::<std::io::Error>() {
            Some(next) => layer = next,
            None => break,
        }
    }
    use std::io::ErrorKind::*;
    let what = match io.kind() {
        ConnectionRefused => "connection refused (is the server running on that host and port?)",
        TimedOut => "timed out",
        ConnectionReset => "connection reset by the server",
        UnexpectedEof => "the server closed the connection during the handshake",
        _ => return None,
    };
    Some(format!("{what}: {io}"))
}

fn tls_cause(err: &rustls::Error) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer
            | CertificateError::BadSignature
            | CertificateError::InvalidPurpose => format!(
                "the server's TLS certificate is not trusted ({err}): if it is signed by a \
                 private CA, pass that CA's PEM file with --ca-cert FILE or {CA_CERT_ENV}"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's TLS certificate is not valid for this host name ({err}): \
                     connect with a name the certificate lists"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the server's TLS certificate has expired ({err})")
            }
            _ => format!("the server's TLS certificate was refused ({err})"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the TLS handshake (alert {alert:?})")
        }
        other => format!("TLS failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_issuer_points_at_ca_cert() {
        let err = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = describe(&err);
        assert!(text.contains("not trusted"), "{text}");
        assert!(text.contains("--ca-cert"), "{text}");
        assert!(text.contains(CA_CERT_ENV), "{text}");
    }

    #[test]
    fn nested_io_errors_are_unwrapped() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let err = std::io::Error::other(tls);
        assert!(describe(&err).contains("not trusted"));
    }

    #[test]
    fn name_mismatch_says_so() {
        let err = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(describe(&err).contains("not valid for this host name"));
    }

    #[test]
    fn refused_and_timeout_are_plain() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(describe(&refused).starts_with("connection refused"));
        let timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert!(describe(&timeout).starts_with("timed out"));
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chain_is_joined_without_repeats() {
        let err = Outer(std::io::Error::other("dns error: no such host"));
        assert_eq!(
            describe(&err),
            "error sending request: dns error: no such host"
        );
        // A known cause deep in the chain wins over the wrapper's text.
        let err = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(describe(&err).starts_with("connection refused"));
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let missing = Trust::with_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/ca.pem"));
        let dir = std::env::temp_dir().join(format!("hopeflow-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = Trust::with_ca_file(&empty).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
        assert!(boxed.to_string().contains("empty.pem"));
        assert!(boxed.source().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
