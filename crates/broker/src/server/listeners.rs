//! The broker's listeners: every one of `listeners` bound at start, each with its advertised
//! endpoint and, for SSL and SASL_SSL, its TLS server config (reloaded when its files change).
//! A connection is plain TCP, whose fetch answers go with `sendfile(2)`, or TLS after a handshake
//! done in the connection's own task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWriteExt, BufReader, BufWriter, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::config::BrokerConfig;
use crate::error::{Error, Result};
use crate::outgoing::Outgoing;
use crate::security::listener::Listener;
use crate::security::tls::TlsServer;
use crate::session::{Principal, Session};

/// How long a client may take over its TLS handshake before the connection is closed.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes gathered before a TLS write: one TLS record (16 KiB) and more per write instead of one
/// per part of an answer.
const TLS_WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Bytes read from the socket at once under TLS: rustls asks for 4 KiB at a time, which would be
/// a system call per 4 KiB of a produce request.
const TLS_READ_BUFFER_BYTES: usize = 64 << 10;

/// A TLS connection: rustls over a buffered socket.
type TlsConnection = TlsStream<BufReader<TcpStream>>;

/// A listener, bound.
#[derive(Debug)]
pub(crate) struct Bound {
    /// Its name, protocol and settings.
    pub(crate) listener: Listener,
    pub(crate) socket: TcpListener,
    /// The bound address (port 0 resolved).
    pub(crate) local_addr: SocketAddr,
    /// What clients of this listener are told: `(host, port)`.
    pub(crate) advertised: (String, i32),
    /// For SSL and SASL_SSL.
    pub(crate) tls: Option<Arc<TlsServer>>,
}

/// Binds every listener; TLS certificates are loaded first, so that a bad keystore stops the
/// start before any port is taken.
pub(crate) async fn bind(config: &BrokerConfig) -> Result<Vec<Bound>> {
    let listeners = config.listeners()?;
    let mut tls = Vec::with_capacity(listeners.all.len());
    for listener in &listeners.all {
        tls.push(if listener.is_tls() {
            let settings = config.tls_settings(listener.name())?;
            Some(Arc::new(
                TlsServer::load(settings).map_err(Error::InvalidConfig)?,
            ))
        } else {
            None
        });
    }
    let mut bound = Vec::with_capacity(listeners.all.len());
    for (listener, tls) in listeners.all.into_iter().zip(tls) {
        let host = match listener.endpoint.host.as_str() {
            "" => "0.0.0.0",
            host => host,
        };
        let what = || {
            format!(
                "binding {}://{host}:{}",
                listener.name(),
                listener.endpoint.port
            )
        };
        let socket = TcpListener::bind((host, listener.endpoint.port))
            .await
            .map_err(|source| Error::Io {
                what: what(),
                source,
            })?;
        let local_addr = socket.local_addr().map_err(|source| Error::Io {
            what: what(),
            source,
        })?;
        let advertised = super::advertised_endpoint(listener.advertised.as_ref(), local_addr);
        bound.push(Bound {
            listener,
            socket,
            local_addr,
            advertised,
            tls,
        });
    }
    Ok(bound)
}

/// A connection as accepted: plain TCP, or TLS after its handshake.
pub(crate) enum Connection {
    Plain(TcpStream),
    Tls(Box<TlsConnection>),
}

impl Bound {
    /// The session and the connection of a client just accepted: for TLS, after the handshake
    /// (a client certificate verified by the truststore names the principal). `None` when the
    /// handshake fails; the reason is logged.
    pub(crate) async fn open(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Connection, Session)> {
        let _ = stream.set_nodelay(true);
        let mut session = Session::new(
            peer,
            Arc::clone(self.listener.name()),
            self.listener.protocol,
        );
        let Some(tls) = &self.tls else {
            return Some((Connection::Plain(stream), session));
        };
        let buffered = BufReader::with_capacity(TLS_READ_BUFFER_BYTES, stream);
        let handshake = tls.acceptor().accept(buffered);
        let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::info!(%peer, listener = %self.listener.name(), error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                tracing::info!(%peer, listener = %self.listener.name(), "TLS handshake timed out");
                return None;
            }
        };
        if let Some(cert) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            match crate::security::tls::subject_dn(cert) {
                Some(dn) => session.principal = Principal::user(dn),
                None => {
                    tracing::warn!(%peer, "a verified client certificate whose subject does not parse; closing");
                    return None;
                }
            }
        }
        Some((Connection::Tls(Box::new(stream)), session))
    }
}

/// The reading half of a connection.
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// The writing half of a connection: answers go with `sendfile(2)` on plain TCP, through a
/// buffer and rustls on TLS.
pub(crate) enum Writer {
    Plain(OwnedWriteHalf),
    Tls(BufWriter<WriteHalf<TlsConnection>>),
}

impl Connection {
    /// Splits the connection for its reader and its in-order writer.
    pub(crate) fn split(self) -> (Reader, Writer) {
        match self {
            Self::Plain(stream) => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Writer::Plain(writer))
            }
            Self::Tls(stream) => {
                let (reader, writer) = tokio::io::split(*stream);
                (
                    Box::new(reader),
                    Writer::Tls(BufWriter::with_capacity(TLS_WRITE_BUFFER_BYTES, writer)),
                )
            }
        }
    }
}

impl Writer {
    /// Writes one answer.
    pub(crate) async fn write(&mut self, frame: &Outgoing) -> io::Result<()> {
        match self {
            Self::Plain(writer) => frame.write_to(writer.as_ref()).await,
            Self::Tls(writer) => frame.write_to_stream(writer).await,
        }
    }

    /// Closes the sending side (TLS: `close_notify` first).
    pub(crate) async fn shutdown(&mut self) {
        let _ = match self {
            Self::Plain(writer) => writer.shutdown().await,
            Self::Tls(writer) => writer.shutdown().await,
        };
    }
}
