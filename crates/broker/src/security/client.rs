//! Connections this broker opens to other brokers (replica fetchers, transaction markers): to
//! the peer's `inter.broker.listener.name` endpoint, over TLS when that listener's protocol is
//! SSL or SASL_SSL (servers verified against this broker's truststore, its keystore certificate
//! presented to listeners that ask for one), authenticated with SASL when it is SASL_PLAINTEXT or
//! SASL_SSL (`security::sasl::inter_broker_login`).

use std::io;
use std::sync::Arc;

use rustls_pki_types::ServerName;
use strata_cluster::BrokerInfo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::BrokerConfig;

/// A byte stream to another broker: plain TCP or TLS.
pub(crate) trait BrokerStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> BrokerStream for T {}

/// A connection to another broker, ready for Kafka requests.
pub(crate) type BoxedStream = Box<dyn BrokerStream>;

/// Where `broker` is reached on listener `name`: its registered endpoint of that name, else
/// (a broker registered before listener names, or one without that listener) its main one.
pub(crate) fn endpoint_of(broker: &BrokerInfo, name: &str) -> (String, u16) {
    broker
        .listeners
        .iter()
        .find(|l| l.name == name)
        .map_or_else(
            || (broker.host.clone(), broker.port),
            |l| (l.host.clone(), l.port),
        )
}

/// Connects to `broker`'s inter-broker listener; on a SASL listener, authenticated, with the
/// session to renew on the connection before it ends. The TLS client config is built at each
/// connection from the current keystore and truststore files, so a renewed certificate is used
/// from the next connection on.
pub(crate) async fn connect_broker(
    config: &BrokerConfig,
    broker: &BrokerInfo,
) -> io::Result<(BoxedStream, Option<super::sasl::ClientSession>)> {
    let listeners = config.listeners().map_err(io::Error::other)?;
    let listener = listeners.inter_broker();
    let (host, port) = endpoint_of(broker, listener.name());
    // The login is read before connecting: a SASL listener without one is a configuration
    // error, not a peer to try.
    let login = if listener.protocol.is_sasl() {
        Some(super::sasl::inter_broker_login(config, listener.name()).map_err(io::Error::other)?)
    } else {
        None
    };
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let mut stream: BoxedStream = if listener.is_tls() {
        let tls = config
            .tls_settings(listener.name())
            .map_err(io::Error::other)?;
        let client = super::tls::client_config(&tls).map_err(io::Error::other)?;
        Box::new(tls_connect(client, &host, tcp).await?)
    } else {
        Box::new(tcp)
    };
    // SASL_PLAINTEXT and SASL_SSL: authenticated before the stream is handed out.
    let session = match login {
        Some(login) => Some(super::sasl::ClientSession::start(&mut stream, login).await?),
        None => None,
    };
    Ok((stream, session))
}

/// The TLS handshake as a client of `host` (a name or an IP address, checked against the
/// server's certificate).
pub(crate) async fn tls_connect(
    client: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is no TLS server name: {e}"),
        )
    })?;
    tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
}
