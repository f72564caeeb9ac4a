//! Who is on the other end of a connection: its address, the listener it came in on and, once
//! authenticated (SASL, or a TLS client certificate), its principal. One [`Session`] per
//! connection, owned by its reader (`server::serve_connection`); handlers see it read-only.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// How a listener secures its connections, as Kafka names it (`listener.security.protocol.map`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    /// Neither encryption nor authentication.
    Plaintext,
    /// TLS; a client certificate, when asked for, names the principal.
    Ssl,
    /// SASL authentication over plain TCP.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Kafka's name: `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol named `name` (case-insensitive), if Kafka has it.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Plaintext,
            Self::Ssl,
            Self::SaslPlaintext,
            Self::SaslSsl,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether connections are encrypted with TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether clients must authenticate with SASL before any other request.
    pub fn is_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Kafka principal, `User:alice`: what ACLs and quotas are written for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    /// The principal type; `User` for every principal Strata builds.
    pub kind: String,
    /// The name: the SASL user name, a certificate's subject DN, or `ANONYMOUS`.
    pub name: String,
}

impl Principal {
    /// `User:ANONYMOUS`: every connection that did not authenticate (PLAINTEXT, or TLS without a
    /// client certificate), as in Kafka.
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    /// `User:<name>`.
    pub fn user(name: impl Into<String>) -> Self {
        Self {
            kind: "User".to_string(),
            name: name.into(),
        }
    }

    /// Parses `Type:name` (`User:alice`, `User:*`, `User:CN=a,O=b`): the name is everything after
    /// the first colon.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, name) = text.split_once(':')?;
        (!kind.is_empty() && !name.is_empty()).then(|| Self {
            kind: kind.to_string(),
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// One connection's identity.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The client's address.
    pub(crate) peer: SocketAddr,
    /// The listener's name (`PLAINTEXT` for a bare `HOST:PORT`), which picks the endpoints
    /// Metadata answers with.
    pub(crate) listener: Arc<str>,
    /// How the listener secures connections.
    pub(crate) protocol: SecurityProtocol,
    /// Who the client is: [`Principal::anonymous`] until it authenticates.
    pub(crate) principal: Principal,
    /// Until when the connection is muted for its client quotas (KIP-219): its reader handles
    /// no further request before then.
    pub(crate) mute: Arc<crate::security::quota::Mute>,
}

impl Session {
    /// An unauthenticated session on `listener`.
    pub(crate) fn new(peer: SocketAddr, listener: Arc<str>, protocol: SecurityProtocol) -> Self {
        Self {
            peer,
            listener,
            protocol,
            principal: Principal::anonymous(),
            mute: Arc::default(),
        }
    }

    /// A session on a bare PLAINTEXT listener: unit tests and in-process calls.
    #[cfg(test)]
    pub(crate) fn plaintext(peer: SocketAddr) -> Self {
        Self::new(peer, Arc::from("PLAINTEXT"), SecurityProtocol::Plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_and_protocols_parse_and_print_as_kafka_writes_them() {
        let p = Principal::parse("User:CN=client,O=Strata").unwrap();
        assert_eq!(p.kind, "User");
        assert_eq!(p.name, "CN=client,O=Strata");
        assert_eq!(p.to_string(), "User:CN=client,O=Strata");
        assert_eq!(Principal::anonymous().to_string(), "User:ANONYMOUS");
        assert!(Principal::parse("alice").is_none());
        assert!(Principal::parse("User:").is_none());
        assert_eq!(
            SecurityProtocol::parse("sasl_ssl"),
            Some(SecurityProtocol::SaslSsl)
        );
        assert!(SecurityProtocol::parse("TLS").is_none());
        assert!(SecurityProtocol::SaslSsl.is_tls() && SecurityProtocol::SaslSsl.is_sasl());
        assert!(!SecurityProtocol::Ssl.is_sasl());
    }
}
