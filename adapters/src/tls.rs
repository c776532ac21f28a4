//! TLS to the services (`rediss://`, `amqps://`, `sslmode=` in a PostgreSQL URL), on
//! rustls with the ring provider: what a connection trusts, and telling a certificate that
//! did not verify from every other failure, so that start-up names the setting that fixes
//! it.
//!
//! A connection trusts the system's roots (rustls-native-certs: `/etc/ssl/certs`, or
//! `SSL_CERT_FILE`) and, per service, the certificates of one CA file ([`CaFile`]) *added*
//! to them: a managed service signed by a public CA needs nothing, one signed by a private
//! CA (RDS, a self-managed broker) needs its CA added, never in place of the system's.
//!
//! | service    | how the CA file is used                                           |
//! |------------|-------------------------------------------------------------------|
//! | Redis      | system roots + the file, as the client's root store (`rediss://`) |
//! | RabbitMQ   | the file as lapin's extra `cert_chain` over the native roots (`amqps://`) |
//! | PostgreSQL | the file as `sslrootcert`, which sqlx adds to the native roots     |

use std::error::Error;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The certificates of a CA file (PEM), read and checked once at start-up.
#[derive(Clone)]
pub struct CaFile {
    path: Arc<str>,
    pem: Arc<str>,
    certs: Arc<[CertificateDer<'static>]>,
}

impl std::fmt::Debug for CaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaFile {
    /// Reads `path`: at least one PEM certificate, each usable as a trust anchor. The
    /// error says what is wrong with the file, for a message that names its setting.
    pub fn read(path: &str) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read the CA file: {e}"))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file of certificates: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate (-----BEGIN CERTIFICATE-----) in the file".into());
        }
        let mut check = rustls::RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            check.add(cert.clone()).map_err(|e| {
                format!(
                    "certificate {} of {} is not a usable CA certificate: {e}",
                    i + 1,
                    certs.len()
                )
            })?;
        }
        Ok(Self {
            path: path.into(),
            pem: String::from_utf8_lossy(&bytes).into(),
            certs: certs.into(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's text, PEM.
    pub(crate) fn pem(&self) -> &str {
        &self.pem
    }

    pub(crate) fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// What one service's connections trust: the system's roots, plus the CA file given by
/// `setting` (the configuration variable, named in messages) if any.
#[derive(Clone, Debug)]
pub struct Trust {
    setting: &'static str,
    ca: Option<CaFile>,
}

impl Trust {
    pub fn new(setting: &'static str, ca: Option<CaFile>) -> Self {
        Self { setting, ca }
    }

    /// The system's roots only.
    pub fn system(setting: &'static str) -> Self {
        Self::new(setting, None)
    }

    pub fn ca(&self) -> Option<&CaFile> {
        self.ca.as_ref()
    }

    /// The variable that adds a CA file.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// When `err` is a server certificate that did not verify, the message that says so
    /// and names the setting; `None` for every other failure.
    pub(crate) fn explain(&self, service: &str, err: &(dyn Error + 'static)) -> Option<String> {
        let why = certificate_failure(err)?;
        let fix = match &self.ca {
            None => format!(
                "set {} to the CA that signed it (it is added to the system's roots)",
                self.setting
            ),
            Some(ca) => format!(
                "{}={} does not hold the CA that signed it",
                self.setting,
                ca.path()
            ),
        };
        Some(format!(
            "could not verify {service}'s TLS certificate ({why}): {fix}"
        ))
    }

    /// The rustls configuration that lapin's connector takes: the CA file's text, added
    /// to the native roots.
    pub(crate) fn lapin_config(&self) -> lapin::tcp::OwnedTLSConfig {
        lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: self.ca.as_ref().map(|ca| ca.pem().to_string()),
        }
    }

    /// A Redis client for `url` trusting the system's roots and the CA file. The redis
    /// crate's root certificates *replace* the system's, so the system's go in too.
    pub(crate) fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        let Some(ca) = self.ca.as_ref().filter(|_| url.starts_with("rediss://")) else {
            return redis::Client::open(url);
        };
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(system_roots_and(ca).into_bytes()),
            },
        )
    }
}

impl Trust {
    /// A Redis Cluster client for `nodes` (`redis://` or `rediss://` URLs), trusting the
    /// system's roots and the CA file as [`Trust::redis_client`] does.
    pub(crate) fn redis_cluster_client(
        &self,
        nodes: &[&str],
        configure: impl FnOnce(
            redis::cluster::ClusterClientBuilder,
        ) -> redis::cluster::ClusterClientBuilder,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.iter().copied());
        if let Some(ca) = self
            .ca
            .as_ref()
            .filter(|_| nodes.iter().any(|n| n.starts_with("rediss://")))
        {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(system_roots_and(ca).into_bytes()),
            });
        }
        configure(builder).build()
    }
}

/// The system's roots followed by `ca`'s certificates, PEM.
fn system_roots_and(ca: &CaFile) -> String {
    let mut roots = rustls_native_certs::load_native_certs().certs;
    roots.extend(ca.certs().iter().cloned());
    let pems: Vec<pem::Pem> = roots
        .iter()
        .map(|c| pem::Pem::new("CERTIFICATE", c.as_ref().to_vec()))
        .collect();
    pem::encode_many(&pems)
}

/// rustls's own words when `err`, or any error under it, is a certificate that did not
/// verify (unknown issuer, wrong name, expired, ...). Each driver wraps the rustls error
/// in its own way: as an `io::Error`'s payload (which `source()` skips), as a source, or
/// only in its text.
fn certificate_failure(err: &(dyn Error + 'static)) -> Option<String> {
    let mut at = Some(err);
    while let Some(e) = at {
        if let Some(tls @ rustls::Error::InvalidCertificate(_)) = e.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        at = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn Error + 'static))
                .or_else(|| io.source()),
            None => e.source(),
        };
    }
    let text = err.to_string();
    text.find("invalid peer certificate")
        .map(|at| text[at..].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_failure_is_found_inside_an_io_error() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let trust = Trust::system("REDIS_CA_FILE");
        let message = trust.explain("Redis", &io).expect("a certificate failure");
        assert!(message.contains("invalid peer certificate"), "{message}");
        assert!(message.contains("set REDIS_CA_FILE"), "{message}");
    }

    #[test]
    fn other_failures_are_not_certificate_failures() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(Trust::system("AMQP_CA_FILE").explain("RabbitMQ", &io), None);
    }

    #[test]
    fn redis_trusts_the_system_roots_and_the_ca_file_not_the_file_alone() {
        let system = rustls_native_certs::load_native_certs().certs;
        // The first system root stands in for a private CA's file.
        let Some(first) = system.first() else {
            eprintln!("no system roots on this machine: nothing to add to");
            return;
        };
        let path = std::env::temp_dir().join(format!("a-ca-{}.pem", std::process::id()));
        std::fs::write(
            &path,
            pem::encode(&pem::Pem::new("CERTIFICATE", first.to_vec())),
        )
        .unwrap();
        let ca = CaFile::read(path.to_str().unwrap()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let roots = pem::parse_many(system_roots_and(&ca)).unwrap();
        assert_eq!(roots.len(), system.len() + 1);
        assert_eq!(roots.last().unwrap().contents(), first.as_ref());
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let path = std::env::temp_dir().join(format!("not-a-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "hello\n").unwrap();
        let err = CaFile::read(path.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("no certificate"), "{err}");
        let err = CaFile::read("/nonexistent/ca.pem").unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
