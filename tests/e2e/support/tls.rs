//! TLS: a certificate authority made per run, and the readiness probe of a
//! server that only speaks TLS.

use std::path::PathBuf;

/// A private CA and a server certificate it signed for `localhost` (only:
/// `127.0.0.1` is a name mismatch), as PEM files in a temp dir.
pub struct TestCa {
    dir: PathBuf,
    pub ca_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_cert: PathBuf,
}

impl TestCa {
    pub fn generate(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!(
            "hopeflow-ca-{}-{name}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("CA dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "HopeFlow e2e test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_string()]).expect("server params");
        let server_cert = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let ca = TestCa {
            ca_cert: dir.join("ca.pem"),
            server_key: dir.join("server-key.pem"),
            server_cert: dir.join("server.pem"),
            dir,
        };
        std::fs::write(&ca.ca_cert, ca_cert.pem()).expect("write CA");
        std::fs::write(&ca.server_key, server_key.serialize_pem()).expect("write key");
        std::fs::write(&ca.server_cert, server_cert.pem()).expect("write certificate");
        ca
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `devserver::health_ok` over TLS to localhost:`port`, trusting `trust`.
pub(super) fn tls_health_ok(port: u16, trust: &hopeflow_client::Trust) -> bool {
    let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(devserver::HEALTH_READ_TIMEOUT));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let Ok(connection) = rustls::ClientConnection::new(trust.client_config(), name) else {
        return false;
    };
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    devserver::health_ok_over(&mut stream, "localhost")
}
