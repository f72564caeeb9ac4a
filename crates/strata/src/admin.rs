//! A small blocking Kafka protocol client for the admin subcommands, built on the same codecs as
//! the broker (`kafka-protocol`). It talks to any Kafka-compatible broker, Strata included.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use strata_broker::security::sasl::{SaslLogin, SaslMechanism};
use strata_broker::security::scram::{self, ScramClient};

/// Largest response accepted (bounds the allocation a broker could size).
const RESPONSE_MAX_BYTES: usize = 100 * 1024 * 1024;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A byte stream to a broker: TCP, or TLS over it.
trait Stream: Read + Write + Send {}

impl<T: Read + Write + Send> Stream for T {}

/// A connection to one broker.
pub struct AdminClient {
    stream: Box<dyn Stream>,
    bootstrap: String,
    correlation_id: i32,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Connects to `bootstrap` (`host:port`) over plain TCP.
    pub fn connect(bootstrap: &str) -> Result<Self> {
        Self::connect_with(bootstrap, &ClientSecurity::default())
    }

    /// Connects to `bootstrap` as `security` says: TLS on SSL and SASL_SSL listeners, and a
    /// SASL login on SASL_PLAINTEXT and SASL_SSL ones.
    pub fn connect_with(bootstrap: &str, security: &ClientSecurity) -> Result<Self> {
        let tcp = TcpStream::connect(bootstrap)
            .with_context(|| format!("connecting to the broker at {bootstrap}"))?;
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        tcp.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &security.tls {
            None => Box::new(tcp),
            Some(config) => {
                // The name the certificate must carry: the bootstrap's host (a name or an IP).
                let host = bootstrap
                    .rsplit_once(':')
                    .map_or(bootstrap, |(host, _)| host)
                    .trim_matches(['[', ']']);
                let name = rustls_pki_types::ServerName::try_from(host.to_string())
                    .with_context(|| format!("{host:?} is no TLS server name"))?;
                let connection = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
                    .context("starting TLS")?;
                Box::new(rustls::StreamOwned::new(connection, tcp))
            }
        };
        let mut client = Self {
            stream,
            bootstrap: bootstrap.to_string(),
            correlation_id: 0,
        };
        if let Some(login) = &security.sasl {
            client
                .authenticate(login)
                .with_context(|| format!("authenticating to {bootstrap} as {}", login.username))?;
        }
        Ok(client)
    }

    /// SaslHandshake v1, then SaslAuthenticate v2 with the mechanism's tokens.
    fn authenticate(&mut self, login: &SaslLogin) -> Result<()> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let handshake = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
        let response = self.call(&handshake, 1)?;
        if response.error_code != 0 {
            let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
            bail!(
                "the broker does not offer {} (error {}); it offers {offered:?}",
                login.mechanism.name(),
                response.error_code
            );
        }
        let mut round = |token: Vec<u8>| -> Result<Bytes> {
            let request = SaslAuthenticateRequest::default().with_auth_bytes(token.into());
            let response = self.call(&request, 2)?;
            if response.error_code != 0 {
                bail!(
                    "{}",
                    response
                        .error_message
                        .as_ref()
                        .map_or("authentication failed", |m| m.as_str())
                );
            }
            Ok(response.auth_bytes)
        };
        match login.mechanism {
            SaslMechanism::Plain => {
                round(format!("\0{}\0{}", login.username, login.password).into_bytes())?;
            }
            SaslMechanism::Scram(m) => {
                let mut client =
                    ScramClient::new(m, &login.username, &login.password, &scram::new_nonce());
                let server_first = round(client.first())?;
                let last = client.last(&server_first)?;
                let server_last = round(last)?;
                client.verify(&server_last)?;
            }
        }
        Ok(())
    }

    /// Sends `request` at `version` and reads its response.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response> {
        let api_key =
            ApiKey::try_from(R::KEY).map_err(|_| anyhow::anyhow!("unknown API key {}", R::KEY))?;
        self.correlation_id += 1;
        let mut frame = BytesMut::from(&[0u8; 4][..]);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("strata-admin")))
            .encode(&mut frame, api_key.request_header_version(version))?;
        request.encode(&mut frame, version)?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        self.stream
            .write_all(&frame)
            .with_context(|| format!("sending {api_key:?} to {}", self.bootstrap))?;

        let mut length = [0u8; 4];
        self.stream
            .read_exact(&mut length)
            .with_context(|| format!("reading the {api_key:?} response from {}", self.bootstrap))?;
        let length = i32::from_be_bytes(length);
        if length < 0 || length as usize > RESPONSE_MAX_BYTES {
            bail!("the broker sent a response of {length} bytes");
        }
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response correlation id {} does not match {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let response = R::Response::decode(&mut body, version)
            .with_context(|| format!("decoding the {api_key:?} v{version} response"))?;
        if body.has_remaining() {
            tracing::debug!(left = body.remaining(), "bytes left after the response");
        }
        Ok(response)
    }
}

/// How the admin client connects: Kafka client properties (`--command-config FILE`).
#[derive(Debug, Clone, Default)]
pub struct ClientSecurity {
    /// The login on a SASL listener; `None` for PLAINTEXT and SSL.
    pub sasl: Option<SaslLogin>,
    /// TLS, on SSL and SASL_SSL listeners.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientSecurity {
    /// Reads a Kafka client properties file: `security.protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT
    /// or SASL_SSL); for SASL `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and the login
    /// as librdkafka takes it (`sasl.username`, `sasl.password`) or as the Java client does
    /// (`sasl.jaas.config`); for TLS the CA certificates (PEM) as the Java client names them
    /// (`ssl.truststore.location`, `ssl.truststore.certificates`) or as librdkafka does
    /// (`ssl.ca.location`, `ssl.ca.pem`), and a client certificate for mutual TLS
    /// (`ssl.keystore.location`, a PEM file with the key and the chain; or librdkafka's
    /// `ssl.certificate.location` and `ssl.key.location`, or their inline `.pem` forms).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the client properties {}", path.display()))?;
        Self::from_properties(&parse_properties(&text))
            .with_context(|| format!("in {}", path.display()))
    }

    /// From `--command-config FILE` when given, else plain TCP without a login.
    pub fn from_command_config(path: Option<&Path>) -> Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::from_file)
    }

    /// From properties already parsed.
    pub fn from_properties(properties: &BTreeMap<String, String>) -> Result<Self> {
        let get = |name: &str| {
            properties
                .get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let protocol = get("security.protocol").unwrap_or_else(|| "PLAINTEXT".into());
        let (tls, sasl) = match protocol.to_ascii_uppercase().as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => bail!("security.protocol={other} is not a Kafka security protocol"),
        };
        let sasl = if sasl {
            Some(login(&protocol, &get)?)
        } else {
            None
        };
        let tls = if tls {
            // librdkafka's names for the same files, mapped onto the Java client's: the CA, and
            // the client certificate and key of mutual TLS as two PEM files (or inline PEM).
            let pem = |location: &str, inline: &str| -> Result<Option<String>> {
                match get(location) {
                    Some(path) => std::fs::read_to_string(&path)
                        .map(Some)
                        .with_context(|| format!("{location}={path}")),
                    None => Ok(get(inline)),
                }
            };
            let certificate = pem("ssl.certificate.location", "ssl.certificate.pem")?;
            let key = pem("ssl.key.location", "ssl.key.pem")?;
            if certificate.is_some() != key.is_some() {
                bail!(
                    "mutual TLS needs both ssl.certificate.location and ssl.key.location (or \
                     ssl.certificate.pem and ssl.key.pem), or ssl.keystore.location"
                );
            }
            let property = |name: &str| match name {
                "ssl.truststore.location" => get(name).or_else(|| get("ssl.ca.location")),
                "ssl.truststore.certificates" => get(name).or_else(|| get("ssl.ca.pem")),
                "ssl.keystore.certificate.chain" => get(name).or_else(|| certificate.clone()),
                "ssl.keystore.key" => get(name).or_else(|| key.clone()),
                _ => get(name),
            };
            let config = strata_broker::security::tls::client_config_from_properties(property)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("security.protocol={protocol}"))?;
            Some(config)
        } else {
            None
        };
        Ok(Self { sasl, tls })
    }
}

/// The SASL login of client properties.
fn login(protocol: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<SaslLogin> {
    let name = get("sasl.mechanism").with_context(|| {
        format!(
            "security.protocol={protocol} needs sasl.mechanism (PLAIN, SCRAM-SHA-256 or \
             SCRAM-SHA-512)"
        )
    })?;
    let mechanism = SaslMechanism::parse(&name)
        .with_context(|| format!("sasl.mechanism={name} is not supported"))?;
    match (
        get("sasl.username"),
        get("sasl.password"),
        get("sasl.jaas.config"),
    ) {
        (Some(username), Some(password), _) => Ok(SaslLogin {
            mechanism,
            username,
            password,
        }),
        (None, None, Some(jaas)) => {
            strata_broker::security::sasl::login_from_jaas(mechanism, &jaas)
                .map_err(anyhow::Error::msg)
        }
        _ => bail!("give sasl.username and sasl.password, or sasl.jaas.config"),
    }
}

/// Parses Java properties as Kafka's tools read them: `name=value` or `name: value` lines, `#`
/// and `!` comments, a trailing `\` continuing a line.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut properties = BTreeMap::new();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => {
                logical.push_str(start);
                continue;
            }
            None => logical.push_str(line),
        }
        let entry = std::mem::take(&mut logical);
        let split = entry.find(['=', ':']).unwrap_or(entry.len());
        let (name, value) = entry.split_at(split);
        let value = value.get(1..).unwrap_or_default();
        properties.insert(name.trim().to_string(), value.trim().to_string());
    }
    properties
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_properties_give_the_login() {
        let properties = parse_properties(
            "# admin\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism = SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n  \
             username=\"admin\" password=\"s=cr:et\";\n",
        );
        let security = ClientSecurity::from_properties(&properties).unwrap();
        let login = security.sasl.unwrap();
        assert_eq!(login.username, "admin");
        assert_eq!(login.password, "s=cr:et");
        let properties = parse_properties(
            "security.protocol: SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\nsasl.password=p\n",
        );
        let login = ClientSecurity::from_properties(&properties)
            .unwrap()
            .sasl
            .unwrap();
        assert_eq!(
            (login.mechanism, login.password.as_str()),
            (SaslMechanism::Plain, "p")
        );
        assert!(
            ClientSecurity::from_properties(&parse_properties(""))
                .unwrap()
                .sasl
                .is_none()
        );
        for bad in [
            "security.protocol=SASL_PLAINTEXT\nsasl.username=u\nsasl.password=p",
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\nsasl.username=u\nsasl.password=p",
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u",
            "security.protocol=TLS",
            // TLS needs the CA to verify the broker with.
            "security.protocol=SSL",
            "security.protocol=SSL\nssl.ca.location=/nonexistent/ca.pem",
        ] {
            assert!(
                ClientSecurity::from_properties(&parse_properties(bad)).is_err(),
                "{bad}"
            );
        }
    }

    /// Mutual TLS with librdkafka's names: the certificate and the key in files of their own.
    #[test]
    fn librdkafka_names_give_the_client_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let ca = write("ca.pem", &cert.pem());
        let certificate = write("client.pem", &cert.pem());
        let private = write("client.key", &key.serialize_pem());
        let with = |extra: &str| {
            ClientSecurity::from_properties(&parse_properties(&format!(
                "security.protocol=SSL\nssl.ca.location={ca}\n{extra}"
            )))
        };
        let mutual = with(&format!(
            "ssl.certificate.location={certificate}\nssl.key.location={private}"
        ))
        .unwrap();
        assert!(mutual.tls.unwrap().client_auth_cert_resolver.has_certs());
        let server_only = with("").unwrap();
        assert!(
            !server_only
                .tls
                .unwrap()
                .client_auth_cert_resolver
                .has_certs()
        );
        for bad in [
            format!("ssl.certificate.location={certificate}"),
            format!("ssl.certificate.location={certificate}\nssl.key.location=/nonexistent.key"),
        ] {
            assert!(with(&bad).is_err(), "{bad}");
        }
    }
}
