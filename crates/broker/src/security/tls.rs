//! TLS with rustls (aws-lc-rs, the provider the AWS SDK already brings): PEM keystores and
//! truststores as Kafka names them, given inline (`ssl.keystore.certificate.chain`,
//! `ssl.keystore.key`, `ssl.truststore.certificates`) or as files (`ssl.keystore.location`: one
//! PEM file holding the key and its chain; `ssl.truststore.location`), each overridable per
//! listener (`listener.name.<name>.ssl.…`), and `ssl.client.auth=none|requested|required`.
//!
//! Files are read again every [`RELOAD_CHECK_INTERVAL`]: when their bytes changed, a new server
//! config is built and new connections use it; a file that does not load is logged and the
//! previous certificates kept.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::session::Principal;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How often keystore and truststore files are read again for changes.
pub(crate) const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A PEM file larger than this is refused (a keystore holds a key and a short chain; a trust
/// store a few hundred CAs at most).
const PEM_BYTES_MAX: u64 = 4 << 20;

/// The TLS settings one listener reads, each `listener.name.<name>.<setting>` first.
pub(crate) const TLS_SETTINGS: &[&str] = &[
    "ssl.keystore.type",
    "ssl.keystore.location",
    "ssl.keystore.certificate.chain",
    "ssl.keystore.key",
    "ssl.key.password",
    "ssl.truststore.type",
    "ssl.truststore.location",
    "ssl.truststore.certificates",
    "ssl.client.auth",
];

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No client certificate asked for.
    None,
    /// Asked for; a client without one is still served (as `User:ANONYMOUS`).
    Requested,
    /// A client without a certificate the truststore verifies is refused.
    Required,
}

/// Where PEM text comes from.
#[derive(Clone, PartialEq, Eq)]
enum Pem {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for Pem {
    // Inline text may be a private key (`ssl.keystore.key`): never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(text) => write!(f, "Inline({} bytes)", text.len()),
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// One listener's TLS settings, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// Which listener (for messages).
    listener: String,
    /// The certificate chain and key: one source holding both, or two inline values.
    keystore: Option<(Pem, Pem)>,
    /// `ssl.key.password`: the password of an encrypted (PKCS#8) key.
    key_password: Option<KeyPassword>,
    truststore: Option<Pem>,
    client_auth: ClientAuth,
}

/// `ssl.key.password`, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
struct KeyPassword(String);

impl std::fmt::Debug for KeyPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPassword(..)")
    }
}

impl TlsSettings {
    /// Reads the settings of listener `listener` through `get`, which answers a setting's value
    /// when it is set (per-listener `listener.name.<lower name>.ssl.*` first, then `ssl.*`).
    pub(crate) fn read(
        listener: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let prefix = format!("listener.name.{}.", listener.to_ascii_lowercase());
        let value = |name: &str| {
            get(&format!("{prefix}{name}"))
                .or_else(|| get(name))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        for store in ["ssl.keystore.type", "ssl.truststore.type"] {
            if let Some(kind) = value(store)
                && !kind.eq_ignore_ascii_case("PEM")
            {
                return Err(format!(
                    "listener {listener}: {store}={kind} is not supported; give PEM"
                ));
            }
        }
        let keystore = match (
            value("ssl.keystore.location"),
            value("ssl.keystore.certificate.chain"),
            value("ssl.keystore.key"),
        ) {
            (Some(path), None, None) => Some((
                Pem::File(PathBuf::from(&path)),
                Pem::File(PathBuf::from(path)),
            )),
            (None, Some(chain), Some(key)) => Some((Pem::Inline(chain), Pem::Inline(key))),
            (None, None, None) => None,
            (Some(_), _, _) => {
                return Err(format!(
                    "listener {listener}: give either ssl.keystore.location or \
                     ssl.keystore.certificate.chain with ssl.keystore.key, not both"
                ));
            }
            (None, _, _) => {
                return Err(format!(
                    "listener {listener}: ssl.keystore.certificate.chain and ssl.keystore.key \
                     go together"
                ));
            }
        };
        let truststore = match (
            value("ssl.truststore.location"),
            value("ssl.truststore.certificates"),
        ) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "listener {listener}: give either ssl.truststore.location or \
                     ssl.truststore.certificates, not both"
                ));
            }
            (Some(path), None) => Some(Pem::File(path.into())),
            (None, Some(certificates)) => Some(Pem::Inline(certificates)),
            (None, None) => None,
        };
        let client_auth = match value("ssl.client.auth").as_deref() {
            None | Some("none") => ClientAuth::None,
            Some("requested") => ClientAuth::Requested,
            Some("required") => ClientAuth::Required,
            Some(other) => {
                return Err(format!(
                    "listener {listener}: ssl.client.auth={other} is not none, requested or required"
                ));
            }
        };
        Ok(Self {
            listener: listener.to_string(),
            keystore,
            key_password: get(&format!("{prefix}ssl.key.password"))
                .or_else(|| get("ssl.key.password"))
                .filter(|p| !p.is_empty())
                .map(KeyPassword),
            truststore,
            client_auth,
        })
    }

    /// The files the settings name, to watch for changes.
    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .keystore
            .iter()
            .flat_map(|(a, b)| [a, b])
            .chain(self.truststore.as_ref())
            .filter_map(|p| match p {
                Pem::File(path) => Some(path.clone()),
                Pem::Inline(_) => None,
            })
            .collect();
        files.dedup();
        files
    }
}

/// The provider every config is built with: aws-lc-rs, named explicitly because rustls is
/// compiled with ring too (through other crates) and then has no process default.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_pem(pem: &Pem) -> Result<Vec<u8>, String> {
    match pem {
        Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        Pem::File(path) => read_file(path),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(PEM_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > PEM_BYTES_MAX {
        return Err(format!(
            "{}: larger than {PEM_BYTES_MAX} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM CERTIFICATE found"));
    }
    Ok(certs)
}

/// A certificate chain and its key, loaded.
type KeyPair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn key_pair(settings: &TlsSettings) -> Result<Option<KeyPair>, String> {
    let Some((chain, key)) = &settings.keystore else {
        return Ok(None);
    };
    let (chain, key) = (read_pem(chain)?, read_pem(key)?);
    let chain = certificates(&chain, "ssl.keystore certificate chain")?;
    let key = match encrypted_key_section(&key) {
        Some(section) => decrypt_key(section, settings.key_password.as_ref())?,
        None => PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| format!("ssl.keystore key: {e} (PKCS#8, PKCS#1 or SEC1 PEM expected)"))?,
    };
    Ok(Some((chain, key)))
}

const ENCRYPTED_KEY_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_KEY_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The `ENCRYPTED PRIVATE KEY` PEM section of a keystore, if it has one.
fn encrypted_key_section(pem: &[u8]) -> Option<&[u8]> {
    let find = |needle: &str, from: usize| {
        pem[from..]
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .map(|at| from + at)
    };
    let begin = find(ENCRYPTED_KEY_BEGIN, 0)?;
    let end = find(ENCRYPTED_KEY_END, begin).map_or(pem.len(), |at| at + ENCRYPTED_KEY_END.len());
    Some(&pem[begin..end])
}

/// Decrypts a PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2 or scrypt, AES-CBC) with
/// `ssl.key.password`, as Kafka's PEM keystores take it.
fn decrypt_key(
    section: &[u8],
    password: Option<&KeyPassword>,
) -> Result<PrivateKeyDer<'static>, String> {
    use pkcs8::der::Decode as _;
    let password = password.ok_or(
        "ssl.keystore key is encrypted (ENCRYPTED PRIVATE KEY): give its password in \
         ssl.key.password",
    )?;
    let (label, der) = pkcs8::der::pem::decode_vec(section)
        .map_err(|e| format!("ssl.keystore encrypted key: not PEM: {e}"))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(format!(
            "ssl.keystore encrypted key: unexpected PEM label {label:?}"
        ));
    }
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(&der)
        .map_err(|e| format!("ssl.keystore encrypted key: not PKCS#8: {e}"))?;
    let plain = info.decrypt(password.0.as_bytes()).map_err(|e| {
        format!("ssl.keystore encrypted key: cannot decrypt it with ssl.key.password ({e})")
    })?;
    Ok(PrivateKeyDer::Pkcs8(plain.as_bytes().to_vec().into()))
}

fn trust_roots(settings: &TlsSettings) -> Result<Option<Arc<RootCertStore>>, String> {
    let Some(pem) = &settings.truststore else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    for cert in certificates(&read_pem(pem)?, "ssl.truststore")? {
        roots
            .add(cert)
            .map_err(|e| format!("ssl.truststore: a certificate does not parse: {e}"))?;
    }
    Ok(Some(Arc::new(roots)))
}

/// Builds the server side of a TLS listener from its settings (reading its files now).
pub(crate) fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    let listener = &settings.listener;
    let in_listener = |e: String| format!("listener {listener}: {e}");
    let (chain, key) = key_pair(settings).map_err(in_listener)?.ok_or_else(|| {
        in_listener(
            "a TLS listener needs ssl.keystore.location, or ssl.keystore.certificate.chain \
             and ssl.keystore.key"
                .into(),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| in_listener(e.to_string()))?;
    let builder = match settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        auth => {
            let roots = trust_roots(settings).map_err(in_listener)?.ok_or_else(|| {
                in_listener(format!(
                    "ssl.client.auth={} needs ssl.truststore.location or \
                     ssl.truststore.certificates",
                    if auth == ClientAuth::Required {
                        "required"
                    } else {
                        "requested"
                    }
                ))
            })?;
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let verifier = if auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| in_listener(format!("ssl.truststore: {e}")))?,
            )
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| in_listener(format!("ssl.keystore: {e}")))?;
    Ok(Arc::new(config))
}

/// A TLS client config from Kafka client properties, for the `strata` admin commands: the
/// servers verified against `ssl.truststore.location` or `ssl.truststore.certificates` (PEM), a
/// client certificate from `ssl.keystore.*` when given. `get` answers a property's value.
pub fn client_config_from_properties(
    get: impl Fn(&str) -> Option<String>,
) -> Result<Arc<ClientConfig>, String> {
    client_config(&TlsSettings::read("client", get)?)
}

/// Builds the client side for connections to other brokers' (or voters') TLS listeners:
/// servers verified against the truststore, this broker's keystore certificate presented when
/// it has one.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<Arc<ClientConfig>, String> {
    let listener = &settings.listener;
    let in_listener = |e: String| format!("listener {listener} (as a client): {e}");
    let roots = trust_roots(settings).map_err(in_listener)?.ok_or_else(|| {
        in_listener(
            "connecting to a TLS listener needs ssl.truststore.location or \
             ssl.truststore.certificates"
                .into(),
        )
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| in_listener(e.to_string()))?
        .with_root_certificates(roots);
    let config = match key_pair(settings).map_err(in_listener)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| in_listener(format!("ssl.keystore: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A TLS listener's server config, rebuilt when its files change.
#[derive(Debug)]
pub(crate) struct TlsServer {
    settings: TlsSettings,
    current: parking_lot::RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<ServerConfig>,
    /// The bytes of each watched file when `config` was built (`None`: unreadable then).
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
}

fn snapshot(files: &[PathBuf]) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    files
        .iter()
        .map(|path| (path.clone(), read_file(path).ok()))
        .collect()
}

impl TlsServer {
    /// Loads the listener's certificates; an error names what is missing or wrong.
    pub(crate) fn load(settings: TlsSettings) -> Result<Self, String> {
        let files = snapshot(&settings.files());
        let config = server_config(&settings)?;
        Ok(Self {
            settings,
            current: parking_lot::RwLock::new(Loaded { config, files }),
        })
    }

    /// What a new connection is accepted with.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.read().config))
    }

    /// Reads the files again; when their bytes changed, builds a new config. Compares bytes,
    /// not modification times: a rewrite within the file system's time granularity would be
    /// missed. Returns whether the certificates changed; a change that does not load keeps the
    /// previous certificates (and is tried again at the next check, the files may be half
    /// written).
    pub(crate) fn reload_if_changed(&self) -> bool {
        let files = self.settings.files();
        if files.is_empty() {
            return false;
        }
        let now = snapshot(&files);
        if now == self.current.read().files {
            return false;
        }
        match server_config(&self.settings) {
            Ok(config) => {
                tracing::info!(
                    listener = %self.settings.listener,
                    "TLS certificates changed; new connections use the new ones"
                );
                *self.current.write() = Loaded { config, files: now };
                true
            }
            Err(e) => {
                tracing::warn!(
                    listener = %self.settings.listener,
                    error = %e,
                    "TLS certificates changed but do not load; keeping the previous ones"
                );
                false
            }
        }
    }
}

/// The metadata quorum's TLS (mutual): the controller listener's server config and the client
/// side of connections to the voters, both from the same files and rebuilt when they change.
#[derive(Debug)]
pub(crate) struct QuorumFiles {
    server: Arc<TlsServer>,
    /// The client config and the server config it was built alongside.
    client: parking_lot::RwLock<(Arc<ServerConfig>, Arc<ClientConfig>)>,
    /// With the authorizer on, the principals (`super.users`) whose certificates may use the
    /// quorum, as Kafka's controllers require CLUSTER_ACTION of the brokers' principals; `None`:
    /// every certificate the truststore verifies.
    admitted: Option<Vec<Principal>>,
}

impl QuorumFiles {
    /// Loads the files; `server` is checked for changes by [`watch`]. `admitted`: see the field.
    pub(crate) fn load(
        mut settings: TlsSettings,
        admitted: Option<Vec<Principal>>,
    ) -> Result<(Self, Arc<TlsServer>), String> {
        settings.client_auth = ClientAuth::Required;
        let client = client_config(&settings)?;
        let server = Arc::new(TlsServer::load(settings)?);
        let current = Arc::clone(&server.current.read().config);
        let files = Self {
            server: Arc::clone(&server),
            client: parking_lot::RwLock::new((current, client)),
            admitted,
        };
        Ok((files, server))
    }
}

/// Whether the leaf certificate's principal (`User:<subject DN>`) is one of `admitted`.
fn admit_quorum_peer(
    admitted: &[Principal],
    certificates: &[CertificateDer<'_>],
) -> Result<(), String> {
    let principal = certificates
        .first()
        .and_then(subject_dn)
        .map(Principal::user)
        .ok_or("no client certificate with a readable subject")?;
    if admitted.contains(&principal) {
        Ok(())
    } else {
        Err(format!(
            "{principal} is not in super.users: with the authorizer on, only super users may use \
             the metadata quorum"
        ))
    }
}

impl strata_cluster::QuorumTlsConfigs for QuorumFiles {
    fn server(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server.current.read().config)
    }

    fn admit(&self, peer_certificates: &[CertificateDer<'_>]) -> Result<(), String> {
        match &self.admitted {
            Some(admitted) => admit_quorum_peer(admitted, peer_certificates),
            None => Ok(()),
        }
    }

    fn client(&self) -> Arc<ClientConfig> {
        let server = self.server();
        let cached = self.client.read().clone();
        if Arc::ptr_eq(&cached.0, &server) {
            return cached.1;
        }
        // The files changed (and loaded as a server config): the client side follows.
        match client_config(&self.server.settings) {
            Ok(client) => {
                *self.client.write() = (server, Arc::clone(&client));
                client
            }
            Err(e) => {
                tracing::warn!(error = %e, "the quorum's TLS client config does not load; keeping the previous one");
                cached.1
            }
        }
    }
}

/// Checks every TLS listener's files every [`RELOAD_CHECK_INTERVAL`] until `shutdown`.
pub(crate) async fn watch(
    servers: Vec<Arc<TlsServer>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if servers.iter().all(|s| s.settings.files().is_empty()) {
        return;
    }
    let mut ticks = tokio::time::interval(RELOAD_CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let servers = servers.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for server in &servers {
                server.reload_if_changed();
            }
        })
        .await;
    }
}

/// The principal of a client certificate, as Kafka's default principal builder makes it:
/// `CN=client,O=Strata` (the subject's distinguished name in RFC 2253 form).
pub(crate) fn subject_dn(cert: &CertificateDer<'_>) -> Option<String> {
    crate::security::der::subject_rfc2253(cert.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::acl::AclSettings;

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(params, key))
    }

    fn leaf(
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        cn: &str,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Strata");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer).unwrap(), key)
    }

    fn settings(pairs: &[(&str, String)]) -> Result<TlsSettings, String> {
        TlsSettings::read("SSL", |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn inline_and_file_keystores_load_and_bad_ones_say_why() {
        let (ca_cert, issuer) = ca("Test CA");
        let (cert, key) = leaf(&issuer, "broker");
        let inline = settings(&[
            ("ssl.keystore.certificate.chain", cert.pem()),
            ("ssl.keystore.key", key.serialize_pem()),
        ])
        .unwrap();
        server_config(&inline).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.pem");
        std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        let trust = dir.path().join("ca.pem");
        std::fs::write(&trust, ca_cert.pem()).unwrap();
        let file = settings(&[
            ("ssl.keystore.location", path.display().to_string()),
            ("ssl.truststore.location", trust.display().to_string()),
            ("ssl.client.auth", "required".into()),
        ])
        .unwrap();
        server_config(&file).unwrap();
        client_config(&file).unwrap();

        let no_trust = settings(&[
            ("ssl.keystore.location", path.display().to_string()),
            ("ssl.client.auth", "required".into()),
        ])
        .unwrap();
        assert!(server_config(&no_trust).unwrap_err().contains("truststore"));
        let e = server_config(&settings(&[]).unwrap()).unwrap_err();
        assert!(e.contains("needs ssl.keystore"), "{e}");
        let (_, other_key) = leaf(&issuer, "other");
        let mismatched = settings(&[
            ("ssl.keystore.certificate.chain", cert.pem()),
            ("ssl.keystore.key", other_key.serialize_pem()),
        ])
        .unwrap();
        let e = server_config(&mismatched).unwrap_err();
        assert!(e.contains("ssl.keystore"), "{e}");
        let e = settings(&[("ssl.keystore.key", key.serialize_pem())]).unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = settings(&[("ssl.keystore.type", "JKS".into())]).unwrap_err();
        assert!(e.contains("PEM"), "{e}");
        let e = settings(&[("ssl.client.auth", "maybe".into())]).unwrap_err();
        assert!(e.contains("ssl.client.auth"), "{e}");
        let missing = settings(&[("ssl.keystore.location", "/nonexistent/k.pem".into())]).unwrap();
        assert!(
            server_config(&missing)
                .unwrap_err()
                .contains("/nonexistent/k.pem")
        );
    }

    /// A PKCS#8 key encrypted with PBES2 (PBKDF2-SHA256, AES-256-CBC), as
    /// `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it.
    fn encrypted_pem(key: &rcgen::KeyPair, password: &str) -> String {
        use pkcs8::der::Decode as _;
        let der = key.serialize_der();
        let info = pkcs8::PrivateKeyInfo::from_der(&der).unwrap();
        let params =
            pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, b"salt-salt", &[7; 16])
                .unwrap();
        info.encrypt_with_params(params, password)
            .unwrap()
            .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_encrypted_key_loads_with_ssl_key_password() {
        let (_, issuer) = ca("Test CA");
        let (cert, key) = leaf(&issuer, "broker");
        let encrypted = encrypted_pem(&key, "key-secret");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.pem");
        std::fs::write(&path, format!("{}{encrypted}", cert.pem())).unwrap();
        let with = |password: Option<&str>| {
            let mut pairs = vec![("ssl.keystore.location", path.display().to_string())];
            pairs.extend(password.map(|p| ("ssl.key.password", p.to_string())));
            settings(&pairs).unwrap()
        };
        // Decrypted, it is the certificate's key (rustls refuses a key that does not match).
        let loaded = with(Some("key-secret"));
        server_config(&loaded).unwrap();
        client_config(
            &settings(&[
                ("ssl.keystore.certificate.chain", cert.pem()),
                ("ssl.keystore.key", encrypted.clone()),
                ("ssl.key.password", "key-secret".into()),
                ("ssl.truststore.certificates", cert.pem()),
            ])
            .unwrap(),
        )
        .unwrap();
        assert!(!format!("{loaded:?}").contains("key-secret"));
        let e = server_config(&with(None)).unwrap_err();
        assert!(e.contains("ssl.key.password"), "{e}");
        let e = server_config(&with(Some("wrong"))).unwrap_err();
        assert!(e.contains("cannot decrypt"), "{e}");
        let (_, other) = leaf(&issuer, "other");
        std::fs::write(
            &path,
            format!("{}{}", cert.pem(), encrypted_pem(&other, "key-secret")),
        )
        .unwrap();
        assert!(
            server_config(&with(Some("key-secret"))).is_err(),
            "another key"
        );
    }

    #[test]
    fn debug_output_never_shows_an_inline_key() {
        let s = settings(&[
            ("ssl.keystore.certificate.chain", "CERT".into()),
            ("ssl.keystore.key", "PRIVATE-KEY-TEXT".into()),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("PRIVATE-KEY-TEXT"), "{shown}");
    }

    #[test]
    fn per_listener_settings_come_first() {
        let s = TlsSettings::read("INTERNAL", |name| match name {
            "listener.name.internal.ssl.client.auth" => Some("required".into()),
            "ssl.client.auth" => Some("none".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.client_auth, ClientAuth::Required);
    }

    #[test]
    fn changed_files_reload_and_broken_ones_keep_the_old_certificates() {
        let (_, issuer) = ca("Test CA");
        let (cert, key) = leaf(&issuer, "broker");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.pem");
        std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        let server = TlsServer::load(
            settings(&[("ssl.keystore.location", path.display().to_string())]).unwrap(),
        )
        .unwrap();
        assert!(!server.reload_if_changed(), "nothing changed");
        let before = Arc::clone(&server.current.read().config);
        std::fs::write(&path, "not a key").unwrap();
        assert!(!server.reload_if_changed(), "a broken file is not taken");
        assert!(Arc::ptr_eq(&before, &server.current.read().config));
        let (cert, key) = leaf(&issuer, "broker-2");
        std::fs::write(&path, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        assert!(server.reload_if_changed());
        assert!(!Arc::ptr_eq(&before, &server.current.read().config));
    }

    #[test]
    fn the_quorum_client_side_follows_reloaded_files() {
        use strata_cluster::QuorumTlsConfigs;
        let (ca_cert, issuer) = ca("Test CA");
        let dir = tempfile::tempdir().unwrap();
        let (keystore, truststore) = (dir.path().join("k.pem"), dir.path().join("ca.pem"));
        std::fs::write(&truststore, ca_cert.pem()).unwrap();
        let write = |cn: &str| {
            let (cert, key) = leaf(&issuer, cn);
            std::fs::write(&keystore, format!("{}{}", key.serialize_pem(), cert.pem())).unwrap();
        };
        write("voter");
        let settings = settings(&[
            ("ssl.keystore.location", keystore.display().to_string()),
            ("ssl.truststore.location", truststore.display().to_string()),
        ])
        .unwrap();
        let (files, server) = QuorumFiles::load(settings, None).unwrap();
        let client = files.client();
        assert!(
            Arc::ptr_eq(&client, &files.client()),
            "cached while nothing changed"
        );
        write("voter-renewed");
        assert!(server.reload_if_changed());
        assert!(
            !Arc::ptr_eq(&client, &files.client()),
            "rebuilt after the reload"
        );
        assert!(Arc::ptr_eq(&files.server(), &server.current.read().config));
    }

    #[test]
    fn with_the_authorizer_on_only_super_users_may_use_the_quorum() {
        use strata_cluster::QuorumTlsConfigs;
        let (ca_cert, issuer) = ca("Test CA");
        let dir = tempfile::tempdir().unwrap();
        let (keystore, truststore) = (dir.path().join("k.pem"), dir.path().join("ca.pem"));
        std::fs::write(&truststore, ca_cert.pem()).unwrap();
        let (voter, key) = leaf(&issuer, "broker-1");
        std::fs::write(&keystore, format!("{}{}", key.serialize_pem(), voter.pem())).unwrap();
        let settings = || {
            settings(&[
                ("ssl.keystore.location", keystore.display().to_string()),
                ("ssl.truststore.location", truststore.display().to_string()),
            ])
            .unwrap()
        };
        let (client, _) = leaf(&issuer, "client");
        let super_users =
            AclSettings::parse_super_users("User:admin;User:CN=broker-1,O=Strata").unwrap();
        let (guarded, _) = QuorumFiles::load(settings(), Some(super_users)).unwrap();
        assert_eq!(guarded.admit(&[voter.der().clone()]), Ok(()));
        let refused = guarded.admit(&[client.der().clone()]).unwrap_err();
        assert!(
            refused.contains("User:CN=client,O=Strata") && refused.contains("super.users"),
            "{refused}"
        );
        assert!(guarded.admit(&[]).is_err(), "no certificate, no admission");
        let (open, _) = QuorumFiles::load(settings(), None).unwrap();
        assert_eq!(
            open.admit(&[client.der().clone()]),
            Ok(()),
            "without the authorizer every verified certificate is admitted"
        );
    }

    #[test]
    fn the_principal_is_the_subject_in_rfc_2253_order() {
        let (_, issuer) = ca("Test CA");
        let (cert, _) = leaf(&issuer, "client");
        assert_eq!(
            subject_dn(cert.der()).as_deref(),
            Some("CN=client,O=Strata")
        );
    }
}
