//! SASL authentication on `SASL_PLAINTEXT` and `SASL_SSL` listeners, as Kafka does it:
//! SaslHandshake (API 17) picks a mechanism, then SaslAuthenticate (API 36) carries its tokens;
//! a client that sent SaslHandshake v0 sends the tokens raw instead (length-prefixed, without a
//! Kafka header). Mechanisms: SCRAM-SHA-256 and SCRAM-SHA-512 ([`super::scram`]), and PLAIN, whose
//! password is checked against the user's stored SCRAM credential.
//!
//! [`SaslConnection::gate`] sees every frame of a SASL connection before the dispatcher: until
//! the client authenticated only ApiVersions, SaslHandshake and SaslAuthenticate pass, anything
//! else closes the connection without reaching a handler. A failed authentication is answered
//! SASL_AUTHENTICATION_FAILED and the connection closed after the answer.
//!
//! Re-authentication (KIP-368): with `connections.max.reauth.ms` set, SaslAuthenticate v1+
//! answers the session's lifetime; the client authenticates again on the same connection (the
//! same principal required) before it ends, and a connection whose session has expired is closed
//! at its next request other than SaslHandshake.
//!
//! Failures are logged on the `strata::audit` target with the user, client address, mechanism
//! and listener; never a password, proof, nonce or key.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use bytes::{Buf as _, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, ResponseKind, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::SecurityStore;
use super::scram::{self, ScramClient, ScramCredential, ScramMechanism, ScramServer};
use crate::config::BrokerConfig;
use crate::session::{Principal, SecurityProtocol, Session};

/// Audit log target: authentication failures (and, at debug level, successes).
pub const AUDIT_TARGET: &str = "strata::audit";
/// Versions of SaslHandshake served: v0 is followed by raw tokens, v1 by SaslAuthenticate.
pub(crate) const HANDSHAKE_VERSIONS: (i16, i16) = (0, 1);
/// Versions of SaslAuthenticate served: v1 adds `session_lifetime_ms` (KIP-368), v2 is flexible.
pub(crate) const AUTHENTICATE_VERSIONS: (i16, i16) = (0, 2);
/// Longest PLAIN token accepted (authorization id, user and password).
const PLAIN_TOKEN_BYTES_MAX: usize = 1024;

/// A SASL mechanism Strata serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SaslMechanism {
    /// `PLAIN` (RFC 4616): the password in clear, so over TLS unless `sasl.plain.allow.plaintext`.
    Plain,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    Scram(ScramMechanism),
}

impl SaslMechanism {
    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(m) => m.name(),
        }
    }

    /// The mechanism named `name` (any case).
    pub fn parse(name: &str) -> Option<Self> {
        if name.trim().eq_ignore_ascii_case("PLAIN") {
            return Some(Self::Plain);
        }
        ScramMechanism::parse(name).map(Self::Scram)
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The broker's SASL settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaslSettings {
    /// `sasl.enabled.mechanisms`, in the order given.
    pub(crate) enabled: Vec<SaslMechanism>,
    /// `sasl.plain.allow.plaintext`: PLAIN offered on SASL_PLAINTEXT listeners too.
    pub(crate) plain_allow_plaintext: bool,
    /// `connections.max.reauth.ms`; 0 (the default) lets sessions last as long as connections.
    pub(crate) reauth_ms: i64,
    /// `connection.failed.authentication.delay.ms`: how long after a failed authentication the
    /// connection is closed (Kafka's default 100).
    pub(crate) failed_authentication_delay_ms: u64,
}

impl SaslSettings {
    /// Reads and checks the settings (an unknown mechanism is an error naming it).
    pub(crate) fn from_config(config: &BrokerConfig) -> Result<Self, String> {
        let mut enabled = Vec::new();
        for name in config.setting("sasl.enabled.mechanisms").split(',') {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let mechanism = SaslMechanism::parse(name).ok_or_else(|| {
                format!(
                    "sasl.enabled.mechanisms: {name:?} is not supported (PLAIN, SCRAM-SHA-256, \
                     SCRAM-SHA-512)"
                )
            })?;
            if !enabled.contains(&mechanism) {
                enabled.push(mechanism);
            }
        }
        let reauth_ms = config
            .setting("connections.max.reauth.ms")
            .trim()
            .parse()
            .map_err(|_| "connections.max.reauth.ms is not a number".to_string())?;
        let failed_authentication_delay_ms = config
            .setting("connection.failed.authentication.delay.ms")
            .trim()
            .parse()
            .map_err(|_| {
                "connection.failed.authentication.delay.ms is not a number of milliseconds"
                    .to_string()
            })?;
        Ok(Self {
            enabled,
            plain_allow_plaintext: config.setting("sasl.plain.allow.plaintext").trim() == "true",
            reauth_ms,
            failed_authentication_delay_ms,
        })
    }

    /// The mechanisms offered on a listener of `protocol`: PLAIN only over TLS unless allowed.
    pub(crate) fn offered(&self, protocol: SecurityProtocol) -> Vec<SaslMechanism> {
        self.enabled
            .iter()
            .copied()
            .filter(|m| {
                *m != SaslMechanism::Plain || protocol.is_tls() || self.plain_allow_plaintext
            })
            .collect()
    }
}

/// What the connection does with a frame.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Hand it to the dispatcher.
    Dispatch,
    /// Write this answer (length-prefixed) and go on.
    Answer(BytesMut),
    /// Write this answer, then close the connection.
    AnswerAndClose(BytesMut, String),
    /// Close the connection without an answer.
    Close(String),
    /// The authentication failed: write this answer (none after SaslHandshake v0), then close
    /// the connection `connection.failed.authentication.delay.ms` later, as Kafka does to slow
    /// password guessing.
    Failed(Option<BytesMut>, String),
}

impl Gate {
    /// The answer to write, if any, and the reason to close the connection after it, if any.
    pub(crate) fn split(self) -> (Option<BytesMut>, Option<String>) {
        match self {
            Self::Dispatch => (None, None),
            Self::Answer(bytes) => (Some(bytes), None),
            Self::AnswerAndClose(bytes, why) => (Some(bytes), Some(why)),
            Self::Close(why) => (None, Some(why)),
            Self::Failed(bytes, why) => (bytes, Some(why)),
        }
    }

    /// Whether the authentication failed, so that the close waits out the delay.
    pub(crate) fn is_failed_authentication(&self) -> bool {
        matches!(self, Self::Failed(..))
    }
}

/// A user authenticated on the connection.
#[derive(Debug, Clone)]
struct Authenticated {
    user: String,
    mechanism: SaslMechanism,
    /// When the session ends (`connections.max.reauth.ms` after it began), if it does.
    expires_at_ms: Option<i64>,
}

/// Where the exchange of tokens stands.
#[derive(Debug)]
enum Exchange {
    /// No exchange in progress: the next SASL request must be SaslHandshake.
    Idle,
    /// A mechanism was chosen; its first token is awaited. `raw`: SaslHandshake v0, tokens
    /// come without the SaslAuthenticate wrapper.
    Chosen { mechanism: SaslMechanism, raw: bool },
    /// A SCRAM exchange awaits the client's final message.
    Scram { server: ScramServer, raw: bool },
}

/// What one token led to.
enum Step {
    /// Send this token; the exchange goes on.
    Continue(Vec<u8>),
    /// Authenticated as `user`; send this last token.
    Done { token: Vec<u8>, user: String },
}

/// Why authentication failed: `reason` for the audit log, `message` for the client.
struct Failure {
    user: Option<String>,
    reason: String,
    message: String,
}

/// The SASL state of one connection on a SASL listener: see the module documentation.
#[derive(Debug)]
pub(crate) struct SaslConnection {
    settings: SaslSettings,
    offered: Vec<SaslMechanism>,
    exchange: Exchange,
    authenticated: Option<Authenticated>,
}

impl SaslConnection {
    /// A connection on a listener of `protocol`, not authenticated yet.
    pub(crate) fn new(settings: SaslSettings, protocol: SecurityProtocol) -> Self {
        Self {
            offered: settings.offered(protocol),
            settings,
            exchange: Exchange::Idle,
            authenticated: None,
        }
    }

    /// The SASL state of a new connection of `session`, when its listener uses SASL.
    pub(crate) fn for_session(config: &BrokerConfig, session: &Session) -> Option<Self> {
        if !session.protocol.is_sasl() {
            return None;
        }
        // Checked at start-up (server::start); were it not, no mechanism is offered.
        let settings = SaslSettings::from_config(config).unwrap_or_else(|_| SaslSettings {
            enabled: Vec::new(),
            plain_allow_plaintext: false,
            reauth_ms: 0,
            failed_authentication_delay_ms: 0,
        });
        Some(Self::new(settings, session.protocol))
    }

    /// Whether the client authenticated (its session may have expired since, which the gate
    /// notices at its next request).
    pub(crate) fn is_authenticated(&self) -> bool {
        self.authenticated.is_some()
    }

    /// How long after a failed authentication the connection is closed
    /// (`connection.failed.authentication.delay.ms`).
    pub(crate) fn failed_authentication_delay(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settings.failed_authentication_delay_ms)
    }

    /// Decides what becomes of `frame`: handled here (SASL), passed to the dispatcher, or the
    /// connection closed. Sets the session's principal when an authentication succeeds.
    pub(crate) fn gate(
        &mut self,
        security: &SecurityStore,
        session: &mut Session,
        frame: &Bytes,
        now_ms: i64,
    ) -> Gate {
        if let Exchange::Chosen { raw: true, .. } | Exchange::Scram { raw: true, .. } =
            self.exchange
        {
            return self.raw_token(security, session, frame, now_ms);
        }
        let Some(prefix) = crate::frame::parse_prefix(frame) else {
            return Gate::Close("a frame shorter than a request header".into());
        };
        match ApiKey::try_from(prefix.api_key) {
            Ok(ApiKey::SaslHandshake) => return self.handshake(session, frame),
            Ok(ApiKey::SaslAuthenticate) => {
                return self.authenticate(security, session, frame, now_ms);
            }
            _ => {}
        }
        let Some(authenticated) = &self.authenticated else {
            if prefix.api_key == ApiKey::ApiVersions as i16 {
                return Gate::Dispatch;
            }
            return Gate::Close(format!(
                "API key {} before SASL authentication on listener {}",
                prefix.api_key, session.listener
            ));
        };
        if authenticated.expires_at_ms.is_some_and(|at| now_ms >= at) {
            return Gate::Close(format!(
                "the SASL session of {} expired (connections.max.reauth.ms) without \
                 re-authentication",
                session.principal
            ));
        }
        Gate::Dispatch
    }

    fn handshake(&mut self, session: &Session, frame: &Bytes) -> Gate {
        let (header, request, version) = match decode::<SaslHandshakeRequest>(
            frame,
            ApiKey::SaslHandshake,
            HANDSHAKE_VERSIONS,
        ) {
            Ok(decoded) => decoded,
            Err(reason) => return Gate::Close(reason),
        };
        let mechanisms: Vec<StrBytes> = self
            .offered
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect();
        let answer = |error: Option<ResponseError>| {
            let response = SaslHandshakeResponse::default()
                .with_error_code(error.map_or(0, |e| e.code()))
                .with_mechanisms(mechanisms.clone());
            encode_response(
                ApiKey::SaslHandshake,
                version,
                header.correlation_id,
                response,
            )
        };
        let name = request.mechanism.as_str();
        if !matches!(self.exchange, Exchange::Idle) {
            return answer_and_close(
                answer(Some(ResponseError::IllegalSaslState)),
                "SaslHandshake in the middle of an exchange",
            );
        }
        let Some(mechanism) = SaslMechanism::parse(name).filter(|m| self.offered.contains(m))
        else {
            audit_failure(
                session,
                None,
                name,
                "mechanism not enabled on this listener",
                self.authenticated.is_some(),
            );
            return answer_and_close(
                answer(Some(ResponseError::UnsupportedSaslMechanism)),
                &format!("unsupported SASL mechanism {name:?}"),
            );
        };
        if let Some(authenticated) = &self.authenticated
            && authenticated.mechanism != mechanism
        {
            audit_failure(
                session,
                Some(&authenticated.user),
                name,
                "re-authentication with another mechanism",
                true,
            );
            return answer_and_close(
                answer(Some(ResponseError::IllegalSaslState)),
                "re-authentication with another SASL mechanism",
            );
        }
        self.exchange = Exchange::Chosen {
            mechanism,
            raw: version == 0,
        };
        match answer(None) {
            Ok(bytes) => Gate::Answer(bytes),
            Err(reason) => Gate::Close(reason),
        }
    }

    fn authenticate(
        &mut self,
        security: &SecurityStore,
        session: &mut Session,
        frame: &Bytes,
        now_ms: i64,
    ) -> Gate {
        let (header, request, version) = match decode::<SaslAuthenticateRequest>(
            frame,
            ApiKey::SaslAuthenticate,
            AUTHENTICATE_VERSIONS,
        ) {
            Ok(decoded) => decoded,
            Err(reason) => return Gate::Close(reason),
        };
        let answer = |response: SaslAuthenticateResponse| {
            encode_response(
                ApiKey::SaslAuthenticate,
                version,
                header.correlation_id,
                response,
            )
        };
        if matches!(self.exchange, Exchange::Idle) {
            let response = SaslAuthenticateResponse::default()
                .with_error_code(ResponseError::IllegalSaslState.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "SaslAuthenticate before SaslHandshake",
                )));
            return answer_and_close(answer(response), "SaslAuthenticate before SaslHandshake");
        }
        match self.step(security, session, &request.auth_bytes, now_ms) {
            Ok(Step::Continue(token)) => {
                let response = SaslAuthenticateResponse::default().with_auth_bytes(token.into());
                match answer(response) {
                    Ok(bytes) => Gate::Answer(bytes),
                    Err(reason) => Gate::Close(reason),
                }
            }
            Ok(Step::Done { token, .. }) => {
                let response = SaslAuthenticateResponse::default()
                    .with_auth_bytes(token.into())
                    .with_session_lifetime_ms(if version >= 1 {
                        self.settings.reauth_ms
                    } else {
                        0
                    });
                match answer(response) {
                    Ok(bytes) => Gate::Answer(bytes),
                    Err(reason) => Gate::Close(reason),
                }
            }
            Err(failure) => {
                let response = SaslAuthenticateResponse::default()
                    .with_error_code(ResponseError::SaslAuthenticationFailed.code())
                    .with_error_message(Some(StrBytes::from_string(failure.message.clone())));
                match answer(response) {
                    Ok(bytes) => Gate::Failed(Some(bytes), failure.message),
                    Err(reason) => Gate::Close(reason),
                }
            }
        }
    }

    /// A token after SaslHandshake v0: answered raw; a failure closes the connection without
    /// an answer (the v0 protocol has no way to carry one).
    fn raw_token(
        &mut self,
        security: &SecurityStore,
        session: &mut Session,
        token: &Bytes,
        now_ms: i64,
    ) -> Gate {
        match self.step(security, session, token, now_ms) {
            Ok(Step::Continue(token) | Step::Done { token, .. }) => {
                let mut bytes = BytesMut::with_capacity(4 + token.len());
                bytes.extend_from_slice(&(token.len() as i32).to_be_bytes());
                bytes.extend_from_slice(&token);
                Gate::Answer(bytes)
            }
            Err(failure) => Gate::Failed(None, failure.message),
        }
    }

    /// Feeds one token to the chosen mechanism. On success, the session's principal is set and
    /// the exchange ends; on failure the failure is audited.
    fn step(
        &mut self,
        security: &SecurityStore,
        session: &mut Session,
        token: &[u8],
        now_ms: i64,
    ) -> Result<Step, Failure> {
        let reauth = self.authenticated.is_some();
        let exchange = std::mem::replace(&mut self.exchange, Exchange::Idle);
        let (mechanism, result) = match exchange {
            Exchange::Idle => unreachable!("checked by the callers"),
            Exchange::Chosen {
                mechanism: SaslMechanism::Plain,
                ..
            } => (SaslMechanism::Plain, plain(security, token, reauth)),
            Exchange::Chosen {
                mechanism: SaslMechanism::Scram(m),
                raw,
            } => {
                let mut server = ScramServer::new(m);
                let first = server.first(
                    token,
                    |user| credential(security, m, user),
                    &scram::new_nonce(),
                );
                match first {
                    Ok(answer) => {
                        self.exchange = Exchange::Scram { server, raw };
                        return Ok(Step::Continue(answer));
                    }
                    Err(e) => (
                        SaslMechanism::Scram(m),
                        Err(scram_failure(m, server.user(), &e, reauth)),
                    ),
                }
            }
            Exchange::Scram { mut server, .. } => {
                let m = server.mechanism();
                let user = server.user().map(str::to_string);
                let result = server
                    .last(token)
                    .map(|(token, user)| Step::Done { token, user })
                    .map_err(|e| scram_failure(m, user.as_deref(), &e, reauth));
                (SaslMechanism::Scram(m), result)
            }
        };
        let result = result.and_then(|step| self.finish(session, mechanism, step, now_ms));
        if let Err(failure) = &result {
            audit_failure(
                session,
                failure.user.as_deref(),
                mechanism.name(),
                &failure.reason,
                reauth,
            );
        }
        result
    }

    /// Ends a successful exchange: the same principal on re-authentication, a new session.
    fn finish(
        &mut self,
        session: &mut Session,
        mechanism: SaslMechanism,
        step: Step,
        now_ms: i64,
    ) -> Result<Step, Failure> {
        let Step::Done { user, .. } = &step else {
            return Ok(step);
        };
        let principal = Principal::user(user.clone());
        if self.authenticated.is_some() && principal != session.principal {
            let message = format!(
                "Cannot change principals during re-authentication from {}: {principal}",
                session.principal
            );
            return Err(Failure {
                user: Some(user.clone()),
                reason: message.clone(),
                message,
            });
        }
        let expires_at_ms = (self.settings.reauth_ms > 0).then(|| now_ms + self.settings.reauth_ms);
        tracing::debug!(
            target: AUDIT_TARGET,
            event = "authenticated",
            principal = %principal,
            client = %session.peer,
            mechanism = mechanism.name(),
            listener = %session.listener,
            reauthentication = self.authenticated.is_some(),
            "authenticated"
        );
        self.authenticated = Some(Authenticated {
            user: user.clone(),
            mechanism,
            expires_at_ms,
        });
        session.principal = principal;
        Ok(step)
    }
}

/// The text Kafka sends when credentials are wrong (for SCRAM, whatever the cause).
fn invalid_credentials(mechanism: &str, reauth: bool) -> String {
    format!(
        "Authentication failed during {} due to invalid credentials with SASL mechanism {mechanism}",
        if reauth {
            "re-authentication"
        } else {
            "authentication"
        }
    )
}

fn scram_failure(
    mechanism: ScramMechanism,
    user: Option<&str>,
    error: &scram::ScramError,
    reauth: bool,
) -> Failure {
    Failure {
        user: user.map(str::to_string),
        reason: error.to_string(),
        message: invalid_credentials(mechanism.name(), reauth),
    }
}

/// `user`'s stored credential for `mechanism`; a record that does not parse counts as none (and
/// is logged: an operator must rewrite it).
fn credential(
    security: &SecurityStore,
    mechanism: ScramMechanism,
    user: &str,
) -> Option<ScramCredential> {
    let records = security.records();
    let json = records.get(scram::STORE_KIND, &scram::store_key(mechanism, user))?;
    match ScramCredential::from_json(mechanism, json) {
        Ok(credential) => Some(credential),
        Err(e) => {
            tracing::error!(user, %mechanism, error = %e, "a stored SCRAM credential is unusable");
            None
        }
    }
}

/// PLAIN (RFC 4616): `authzid NUL user NUL password`, the password checked against the user's
/// SCRAM-SHA-256 credential, else its SCRAM-SHA-512 one.
fn plain(security: &SecurityStore, token: &[u8], reauth: bool) -> Result<Step, Failure> {
    let fail = |user: Option<&str>, reason: &str| Failure {
        user: user.map(str::to_string),
        reason: reason.to_string(),
        message: if reauth {
            "Authentication failed during re-authentication: Invalid username or password".into()
        } else {
            "Authentication failed: Invalid username or password".into()
        },
    };
    if token.len() > PLAIN_TOKEN_BYTES_MAX {
        return Err(fail(None, "PLAIN token too long"));
    }
    let text = std::str::from_utf8(token).map_err(|_| fail(None, "PLAIN token is not UTF-8"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(fail(None, "malformed PLAIN token"));
    };
    if user.is_empty() {
        return Err(fail(None, "empty user name"));
    }
    if !authzid.is_empty() && authzid != user {
        return Err(fail(
            Some(user),
            "the authorization id differs from the user name",
        ));
    }
    let found = ScramMechanism::ALL
        .into_iter()
        .find_map(|m| credential(security, m, user).map(|c| (m, c)));
    // An unknown user's password is checked too, against a decoy, so that it costs the PBKDF2
    // a known user's does and the time of the answer does not tell which users exist.
    let known = found.is_some();
    let (mechanism, credential) = found.unwrap_or_else(|| decoy_credential(security));
    // One PBKDF2 of thousands of iterations: off tokio's workers, like disk work.
    let verified =
        crate::handler::off_the_workers(|| credential.verify_password(mechanism, password));
    if !known {
        return Err(fail(Some(user), "unknown user"));
    }
    if !verified {
        return Err(fail(Some(user), "invalid password"));
    }
    Ok(Step::Done {
        token: Vec::new(),
        user: user.to_string(),
    })
}

/// What PLAIN checks an unknown user's password against (SCRAM's decoy salt does the same for
/// its exchange): the mechanism and iteration count of the first stored credential, so that it
/// costs what a known user's check does (SCRAM-SHA-512 at the default count when there is
/// none), with random keys that no password matches.
fn decoy_credential(security: &SecurityStore) -> (ScramMechanism, ScramCredential) {
    let records = security.records();
    let (mechanism, iterations) = records
        .kind(scram::STORE_KIND)
        .find_map(|(key, json)| {
            let (mechanism, _) = scram::parse_store_key(key)?;
            let credential = ScramCredential::from_json(mechanism, json).ok()?;
            Some((mechanism, credential.iterations))
        })
        .unwrap_or((ScramMechanism::Sha512, scram::ITERATIONS_DEFAULT));
    let credential = ScramCredential {
        salt: scram::random_bytes(scram::SALT_BYTES),
        iterations,
        stored_key: scram::random_bytes(mechanism.hash_bytes()),
        server_key: scram::random_bytes(mechanism.hash_bytes()),
    };
    (mechanism, credential)
}

/// Logs a failed authentication on the audit target. `reason` never holds a secret.
fn audit_failure(
    session: &Session,
    user: Option<&str>,
    mechanism: &str,
    reason: &str,
    reauth: bool,
) {
    tracing::warn!(
        target: AUDIT_TARGET,
        event = "authentication_failed",
        user = user.unwrap_or("-"),
        client = %session.peer,
        mechanism,
        listener = %session.listener,
        reauthentication = reauth,
        reason,
        "authentication failed"
    );
}

fn answer_and_close(answer: Result<BytesMut, String>, why: &str) -> Gate {
    match answer {
        Ok(bytes) => Gate::AnswerAndClose(bytes, why.to_string()),
        Err(reason) => Gate::Close(reason),
    }
}

/// Decodes a request of `api_key` within `versions`: its header, body and version.
fn decode<R: Decodable>(
    frame: &Bytes,
    api_key: ApiKey,
    versions: (i16, i16),
) -> Result<(RequestHeader, R, i16), String> {
    let prefix = crate::frame::parse_prefix(frame).ok_or("a frame shorter than a header")?;
    let version = prefix.api_version;
    if version < versions.0 || version > versions.1 {
        return Err(format!(
            "{api_key:?} v{version} is not supported (supported: v{}..=v{})",
            versions.0, versions.1
        ));
    }
    let mut body = frame.clone();
    let header = RequestHeader::decode(&mut body, api_key.request_header_version(version))
        .map_err(|e| format!("malformed {api_key:?} request header: {e}"))?;
    let request = R::decode(&mut body, version)
        .map_err(|e| format!("malformed {api_key:?} v{version} request: {e}"))?;
    Ok((header, request, version))
}

fn encode_response(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: impl Into<ResponseKind>,
) -> Result<BytesMut, String> {
    crate::handler::encode(api_key, version, correlation_id, &response.into())
}

/// A client's SASL login: mechanism, user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslLogin {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for SaslLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslLogin")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Parses a JAAS configuration as Kafka takes it in `sasl.jaas.config`:
/// `org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="p";`
/// (or `…plain.PlainLoginModule`): the login module's class and its options. Values are quoted
/// (`\"` and `\\` escaped) or bare words.
pub fn parse_jaas_config(text: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let bad = |why: &str| format!("sasl.jaas.config: {why}");
    let text = text.trim();
    let body = text
        .strip_suffix(';')
        .ok_or_else(|| bad("must end with ';'"))?;
    let mut rest = body.trim_start();
    let word = |rest: &mut &str| -> Option<String> {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let w = rest[..end].to_string();
        *rest = rest[end..].trim_start();
        (!w.is_empty()).then_some(w)
    };
    let module = word(&mut rest).ok_or_else(|| bad("no login module"))?;
    let flag = word(&mut rest).ok_or_else(|| bad("no control flag"))?;
    if !["required", "requisite", "sufficient", "optional"].contains(&flag.as_str()) {
        return Err(bad(&format!("{flag:?} is not a control flag")));
    }
    let mut options = BTreeMap::new();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| bad("an option is not NAME=VALUE"))?;
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(bad("an option has no name"));
        }
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(
                        chars
                            .next()
                            .map(|(_, c)| c)
                            .ok_or_else(|| bad("a quoted value ends in '\\'"))?,
                    ),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or_else(|| bad("a quoted value is not closed"))?;
            (value, &quoted[end..])
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        options.insert(name.to_string(), value);
        rest = next.trim_start();
    }
    Ok((module, options))
}

/// The login a `sasl.jaas.config` value gives for `mechanism`: its `username` and `password`
/// options, the module matching the mechanism (ScramLoginModule for SCRAM, PlainLoginModule for
/// PLAIN).
pub fn login_from_jaas(mechanism: SaslMechanism, jaas: &str) -> Result<SaslLogin, String> {
    let (module, mut options) = parse_jaas_config(jaas)?;
    let expected = match mechanism {
        SaslMechanism::Plain => "PlainLoginModule",
        SaslMechanism::Scram(_) => "ScramLoginModule",
    };
    if module.rsplit('.').next() != Some(expected) {
        return Err(format!(
            "sasl.jaas.config: {mechanism} needs the {expected}, not {module}"
        ));
    }
    let mut take = |name: &str| {
        options
            .remove(name)
            .ok_or_else(|| format!("sasl.jaas.config: no {name}= option"))
    };
    Ok(SaslLogin {
        mechanism,
        username: take("username")?,
        password: take("password")?,
    })
}

/// Checks the SASL settings at start-up, so that a broker that could authenticate no one, or
/// could not authenticate to the other brokers, stops with a message naming the setting: the
/// mechanisms are known, a SASL listener has one to offer, and in a cluster whose inter-broker
/// listener uses SASL the brokers' own login is configured with an enabled mechanism.
pub(crate) fn check_config(config: &BrokerConfig) -> Result<(), String> {
    let settings = SaslSettings::from_config(config)?;
    let listeners = config.listeners().map_err(|e| e.to_string())?;
    for listener in listeners.all.iter().filter(|l| l.protocol.is_sasl()) {
        if settings.offered(listener.protocol).is_empty() {
            return Err(format!(
                "listener {} is {}: sasl.enabled.mechanisms offers no mechanism on it",
                listener.name(),
                listener.protocol
            ));
        }
    }
    let inter_broker = listeners.inter_broker();
    if config.is_clustered() && inter_broker.protocol.is_sasl() {
        let login = inter_broker_login(config, inter_broker.name())?;
        if !settings
            .offered(inter_broker.protocol)
            .contains(&login.mechanism)
        {
            return Err(format!(
                "sasl.mechanism.inter.broker.protocol={} is not offered on the inter-broker \
                 listener {} (sasl.enabled.mechanisms)",
                login.mechanism,
                inter_broker.name()
            ));
        }
    }
    Ok(())
}

/// The login this broker uses on its SASL inter-broker listener `listener`:
/// `sasl.mechanism.inter.broker.protocol`, with the credentials of
/// `listener.name.<listener>.<mechanism>.sasl.jaas.config`, else `sasl.jaas.config`.
pub(crate) fn inter_broker_login(
    config: &BrokerConfig,
    listener: &str,
) -> Result<SaslLogin, String> {
    let name = config.setting("sasl.mechanism.inter.broker.protocol");
    let mechanism = SaslMechanism::parse(&name).ok_or_else(|| {
        format!("sasl.mechanism.inter.broker.protocol: {name:?} is not supported")
    })?;
    let prefixed = format!(
        "listener.name.{}.{}.sasl.jaas.config",
        listener.to_ascii_lowercase(),
        mechanism.name().to_ascii_lowercase()
    );
    let jaas = [prefixed.as_str(), "sasl.jaas.config"]
        .into_iter()
        .find(|n| config.is_set(n))
        .map(|n| config.setting(n))
        .ok_or_else(|| {
            format!(
                "the inter-broker listener {listener} uses SASL: set {prefixed} or sasl.jaas.config"
            )
        })?;
    login_from_jaas(mechanism, &jaas)
}

/// The SASL session of a connection this broker opened to another broker: its login, and when
/// to authenticate again on the same connection (KIP-368) if the other broker bounds sessions.
#[derive(Debug)]
pub(crate) struct ClientSession {
    login: SaslLogin,
    /// 85% of the session lifetime the other broker answered (librdkafka takes 90%), so that
    /// a request in flight at the renewal still finds the session valid.
    renew_at: Option<std::time::Instant>,
}

impl ClientSession {
    /// Authenticates `stream` with `login`.
    pub(crate) async fn start<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        login: SaslLogin,
    ) -> io::Result<Self> {
        let started = std::time::Instant::now();
        let lifetime = authenticate_client(stream, &login).await?;
        Ok(Self {
            login,
            renew_at: lifetime.map(|l| started + l.mul_f64(0.85)),
        })
    }

    /// Authenticates again on `stream` when the session is near its end at `now`; called
    /// between requests, while nothing else is in flight on the connection.
    pub(crate) async fn renew_if_due<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        now: std::time::Instant,
    ) -> io::Result<()> {
        if self.renew_at.is_some_and(|at| now >= at) {
            *self = Self::start(stream, self.login.clone()).await?;
        }
        Ok(())
    }
}

/// Authenticates this end of `stream` as a client (SaslHandshake v1, then SaslAuthenticate v2):
/// for the connections a broker opens to other brokers. The session's lifetime when the other
/// broker bounds it (`connections.max.reauth.ms`).
pub(crate) async fn authenticate_client<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    login: &SaslLogin,
) -> io::Result<Option<std::time::Duration>> {
    let refused = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let handshake = SaslHandshakeRequest::default()
        .with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
    let response: SaslHandshakeResponse =
        call(stream, ApiKey::SaslHandshake, 1, 1, handshake).await?;
    if response.error_code != 0 {
        return Err(refused(format!(
            "the broker refused SASL mechanism {} (error {}; it offers {:?})",
            login.mechanism,
            response.error_code,
            response
                .mechanisms
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
        )));
    }
    match login.mechanism {
        SaslMechanism::Plain => {
            let token = format!("\0{}\0{}", login.username, login.password);
            let (_, lifetime_ms) = sasl_authenticate(stream, login, token.into_bytes(), 2).await?;
            Ok(lifetime(lifetime_ms))
        }
        SaslMechanism::Scram(m) => {
            let mut client =
                ScramClient::new(m, &login.username, &login.password, &scram::new_nonce());
            let (server_first, _) = sasl_authenticate(stream, login, client.first(), 2).await?;
            let last = client
                .last(&server_first)
                .map_err(|e| refused(e.to_string()))?;
            let (server_last, lifetime_ms) = sasl_authenticate(stream, login, last, 3).await?;
            client
                .verify(&server_last)
                .map_err(|e| refused(e.to_string()))?;
            Ok(lifetime(lifetime_ms))
        }
    }
}

/// A `session_lifetime_ms`: 0 (or less) is a session as long as the connection.
fn lifetime(ms: i64) -> Option<std::time::Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
}

/// One SaslAuthenticate round: sends `token`, returns the broker's and the session lifetime.
async fn sasl_authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    login: &SaslLogin,
    token: Vec<u8>,
    correlation_id: i32,
) -> io::Result<(Bytes, i64)> {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(token.into());
    let response: SaslAuthenticateResponse =
        call(stream, ApiKey::SaslAuthenticate, 2, correlation_id, request).await?;
    if response.error_code != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "SASL authentication as {} failed: {}",
                login.username,
                response
                    .error_message
                    .as_ref()
                    .map_or("no message", |m| m.as_str())
            ),
        ));
    }
    Ok((response.auth_bytes, response.session_lifetime_ms))
}

/// Sends one request and reads its response (the connection is not shared yet).
async fn call<S, Req, Resp>(
    stream: &mut S,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: Req,
) -> io::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Req: Encodable,
    Resp: Decodable,
{
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut frame = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("strata-broker")))
        .encode(&mut frame, api_key.request_header_version(version))
        .map_err(|e| invalid(e.to_string()))?;
    request
        .encode(&mut frame, version)
        .map_err(|e| invalid(e.to_string()))?;
    let length = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let length = stream.read_i32().await?;
    // SASL answers are small: a bound on what a peer can make this side allocate.
    if !(0..=64 * 1024).contains(&length) {
        return Err(invalid(format!("a {api_key:?} answer of {length} bytes")));
    }
    let mut body = vec![0u8; length as usize];
    stream.read_exact(&mut body).await?;
    let mut body = Bytes::from(body);
    let header = ResponseHeader::decode(&mut body, api_key.response_header_version(version))
        .map_err(|e| invalid(e.to_string()))?;
    if header.correlation_id != correlation_id {
        return Err(invalid(format!(
            "{api_key:?}: correlation id {} instead of {correlation_id}",
            header.correlation_id
        )));
    }
    let response = Resp::decode(&mut body, version).map_err(|e| invalid(e.to_string()))?;
    if body.has_remaining() {
        return Err(invalid(format!("{api_key:?}: bytes after the answer")));
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};

    use super::*;
    use crate::security::{LocalSecurityStore, SecurityChange};

    const PASSWORD: &str = "alice-secret";

    fn store(dir: &std::path::Path) -> SecurityStore {
        let mut changes = Vec::new();
        for (user, password) in [("alice", PASSWORD), ("bob", "bob-secret")] {
            for m in ScramMechanism::ALL {
                changes.push(SecurityChange {
                    kind: scram::STORE_KIND.into(),
                    key: scram::store_key(m, user),
                    value: Some(
                        ScramCredential::new(m, password, scram::ITERATIONS_MIN)
                            .unwrap()
                            .to_json(),
                    ),
                });
            }
        }
        LocalSecurityStore::open(dir).apply(&changes).unwrap();
        SecurityStore::local(dir).unwrap()
    }

    fn settings(enabled: &str, plain_allow_plaintext: bool, reauth_ms: i64) -> SaslSettings {
        SaslSettings {
            enabled: enabled
                .split(',')
                .map(|m| SaslMechanism::parse(m).unwrap())
                .collect(),
            plain_allow_plaintext,
            reauth_ms,
            failed_authentication_delay_ms: 100,
        }
    }

    fn session(protocol: SecurityProtocol) -> Session {
        Session::new(
            "127.0.0.1:5000".parse().unwrap(),
            Arc::from(protocol.name()),
            protocol,
        )
    }

    fn frame(api_key: ApiKey, version: i16, request: impl Encodable) -> Bytes {
        let mut frame = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(9)
            .encode(&mut frame, api_key.request_header_version(version))
            .unwrap();
        request.encode(&mut frame, version).unwrap();
        frame.freeze()
    }

    fn handshake_frame(version: i16, mechanism: &str) -> Bytes {
        let request =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into()));
        frame(ApiKey::SaslHandshake, version, request)
    }

    fn authenticate_frame(version: i16, token: &[u8]) -> Bytes {
        let request =
            SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token));
        frame(ApiKey::SaslAuthenticate, version, request)
    }

    /// The answer's body after its length and header, and whether the connection closes.
    fn answer<R: Decodable>(gate: Gate, api_key: ApiKey, version: i16) -> (R, bool) {
        let (bytes, closes) = match gate {
            Gate::Answer(bytes) => (bytes, false),
            Gate::AnswerAndClose(bytes, _) | Gate::Failed(Some(bytes), _) => (bytes, true),
            other => panic!("expected an answer, got {other:?}"),
        };
        let mut body = bytes.freeze().slice(4..);
        let header =
            ResponseHeader::decode(&mut body, api_key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, 9);
        (R::decode(&mut body, version).unwrap(), closes)
    }

    fn handshake(
        conn: &mut SaslConnection,
        session: &Session,
        mechanism: &str,
    ) -> (SaslHandshakeResponse, bool) {
        answer(
            conn.handshake(session, &handshake_frame(1, mechanism)),
            ApiKey::SaslHandshake,
            1,
        )
    }

    fn authenticate(
        conn: &mut SaslConnection,
        security: &SecurityStore,
        session: &mut Session,
        token: &[u8],
        now_ms: i64,
    ) -> (SaslAuthenticateResponse, bool) {
        let gate = conn.gate(security, session, &authenticate_frame(2, token), now_ms);
        answer(gate, ApiKey::SaslAuthenticate, 2)
    }

    /// A whole SCRAM login; the last answer (an error, or the server's final message).
    fn scram_login(
        conn: &mut SaslConnection,
        security: &SecurityStore,
        session: &mut Session,
        mechanism: ScramMechanism,
        (user, password): (&str, &str),
        now_ms: i64,
    ) -> (SaslAuthenticateResponse, bool) {
        let (response, closes) = handshake(conn, session, mechanism.name());
        assert_eq!((response.error_code, closes), (0, false));
        let mut client = ScramClient::new(mechanism, user, password, &scram::new_nonce());
        let (first, closes) = authenticate(conn, security, session, &client.first(), now_ms);
        assert_eq!((first.error_code, closes), (0, false));
        let last = client.last(&first.auth_bytes).unwrap();
        let (response, closes) = authenticate(conn, security, session, &last, now_ms);
        if response.error_code == 0 {
            client.verify(&response.auth_bytes).unwrap();
        }
        (response, closes)
    }

    fn metadata() -> Bytes {
        frame(ApiKey::Metadata, 12, MetadataRequest::default())
    }

    #[test]
    fn before_authentication_only_api_versions_and_sasl_pass() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        let mut session = session(SecurityProtocol::SaslPlaintext);
        let mut conn = SaslConnection::new(settings("SCRAM-SHA-256", false, 0), session.protocol);
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 0),
            Gate::Close(_)
        ));
        let api_versions = frame(ApiKey::ApiVersions, 3, ApiVersionsRequest::default());
        assert!(matches!(
            conn.gate(&security, &mut session, &api_versions, 0),
            Gate::Dispatch
        ));
        // Garbage (a TLS ClientHello, an HTTP request) closes too.
        assert!(matches!(
            conn.gate(
                &security,
                &mut session,
                &Bytes::from_static(b"\x16\x03\x01"),
                0
            ),
            Gate::Close(_)
        ));
        let (response, closes) = authenticate(&mut conn, &security, &mut session, b"n,,n=a,r=b", 0);
        assert_eq!(response.error_code, ResponseError::IllegalSaslState.code());
        assert!(closes);
        assert_eq!(session.principal, Principal::anonymous());
    }

    #[test]
    fn scram_logins_set_the_principal_and_wrong_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        for mechanism in ScramMechanism::ALL {
            let mut session = session(SecurityProtocol::SaslPlaintext);
            let mut conn = SaslConnection::new(
                settings("SCRAM-SHA-256,SCRAM-SHA-512", false, 0),
                session.protocol,
            );
            let (response, closes) = scram_login(
                &mut conn,
                &security,
                &mut session,
                mechanism,
                ("alice", PASSWORD),
                0,
            );
            assert_eq!((response.error_code, closes), (0, false));
            assert_eq!(response.session_lifetime_ms, 0);
            assert_eq!(session.principal.to_string(), "User:alice");
            assert!(matches!(
                conn.gate(&security, &mut session, &metadata(), 0),
                Gate::Dispatch
            ));

            for (user, password) in [("alice", "guess"), ("nobody", "guess")] {
                let mut session = session_of(SecurityProtocol::SaslPlaintext);
                let mut conn = SaslConnection::new(
                    settings("SCRAM-SHA-256,SCRAM-SHA-512", false, 0),
                    session.protocol,
                );
                let (response, closes) = scram_login(
                    &mut conn,
                    &security,
                    &mut session,
                    mechanism,
                    (user, password),
                    0,
                );
                assert_eq!(
                    response.error_code,
                    ResponseError::SaslAuthenticationFailed.code()
                );
                assert_eq!(
                    response.error_message.as_deref(),
                    Some(format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}").as_str())
                );
                assert!(
                    closes,
                    "the connection closes after a failed authentication"
                );
                assert_eq!(session.principal, Principal::anonymous());
            }
        }
    }

    fn session_of(protocol: SecurityProtocol) -> Session {
        session(protocol)
    }

    #[test]
    fn mechanisms_not_enabled_are_refused_and_plain_needs_tls_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        let all = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512";
        let session = session(SecurityProtocol::SaslPlaintext);
        let mut conn = SaslConnection::new(settings(all, false, 0), session.protocol);
        let (response, closes) = handshake(&mut conn, &session, "PLAIN");
        assert_eq!(
            response.error_code,
            ResponseError::UnsupportedSaslMechanism.code()
        );
        let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(offered, ["SCRAM-SHA-256", "SCRAM-SHA-512"]);
        assert!(closes);
        let mut conn = SaslConnection::new(settings("SCRAM-SHA-512", false, 0), session.protocol);
        assert!(handshake(&mut conn, &session, "SCRAM-SHA-256").1);
        let mut conn = SaslConnection::new(settings("SCRAM-SHA-512", false, 0), session.protocol);
        assert!(handshake(&mut conn, &session, "GSSAPI").1);

        for (protocol, allow) in [
            (SecurityProtocol::SaslSsl, false),
            (SecurityProtocol::SaslPlaintext, true),
        ] {
            for (user, password, ok) in [
                ("alice", PASSWORD, true),
                ("alice", "guess", false),
                ("carol", "x", false),
                ("bob", PASSWORD, false),
            ] {
                let mut session = session_of(protocol);
                let mut conn = SaslConnection::new(settings(all, allow, 0), protocol);
                assert_eq!(handshake(&mut conn, &session, "PLAIN").0.error_code, 0);
                let token = format!("\0{user}\0{password}");
                let (response, closes) =
                    authenticate(&mut conn, &security, &mut session, token.as_bytes(), 0);
                assert_eq!(response.error_code == 0, ok, "{user} {password}");
                assert_eq!(closes, !ok);
                assert_eq!(session.principal.name == "alice", ok);
            }
        }
        // An authorization id other than the user is refused.
        let mut session = session_of(SecurityProtocol::SaslSsl);
        let mut conn = SaslConnection::new(settings(all, false, 0), session.protocol);
        handshake(&mut conn, &session, "PLAIN");
        let token = format!("bob\0alice\0{PASSWORD}");
        assert!(authenticate(&mut conn, &security, &mut session, token.as_bytes(), 0).1);
    }

    #[test]
    fn plain_checks_an_unknown_users_password_as_dearly_as_a_known_users() {
        let dir = tempfile::tempdir().unwrap();
        let pbkdf2_iterations = |security: &SecurityStore, token: &str| {
            let before = scram::PBKDF2_ITERATIONS.with(std::cell::Cell::get);
            assert!(
                plain(security, token.as_bytes(), false).is_err(),
                "{token:?}"
            );
            scram::PBKDF2_ITERATIONS.with(std::cell::Cell::get) - before
        };
        let security = store(dir.path());
        let known = pbkdf2_iterations(&security, "\0alice\0guess");
        assert_eq!(known, u64::from(scram::ITERATIONS_MIN));
        assert_eq!(pbkdf2_iterations(&security, "\0nobody\0guess"), known);
        // With no credential stored, the decoy costs the default iteration count.
        let empty = tempfile::tempdir().unwrap();
        let security = SecurityStore::local(empty.path()).unwrap();
        assert_eq!(
            pbkdf2_iterations(&security, "\0nobody\0guess"),
            u64::from(scram::ITERATIONS_DEFAULT)
        );
    }

    #[test]
    fn sessions_expire_and_reauthenticate_as_the_same_principal_only() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        let m = ScramMechanism::Sha256;
        let mut session = session(SecurityProtocol::SaslPlaintext);
        let mut conn = SaslConnection::new(
            settings("SCRAM-SHA-256,SCRAM-SHA-512", false, 1000),
            session.protocol,
        );
        let (response, _) = scram_login(
            &mut conn,
            &security,
            &mut session,
            m,
            ("alice", PASSWORD),
            0,
        );
        assert_eq!(response.session_lifetime_ms, 1000);
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 999),
            Gate::Dispatch
        ));
        // Re-authenticated before the end: a new session of 1000 ms from then.
        let (response, closes) = scram_login(
            &mut conn,
            &security,
            &mut session,
            m,
            ("alice", PASSWORD),
            900,
        );
        assert_eq!(
            (response.error_code, closes, response.session_lifetime_ms),
            (0, false, 1000)
        );
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 1899),
            Gate::Dispatch
        ));
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 1900),
            Gate::Close(_)
        ));
        // A handshake still starts a re-authentication after the end, as in Kafka.
        let (response, closes) = scram_login(
            &mut conn,
            &security,
            &mut session,
            m,
            ("alice", PASSWORD),
            2000,
        );
        assert_eq!((response.error_code, closes), (0, false));
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 2001),
            Gate::Dispatch
        ));
        // Another principal is refused, and so is another mechanism.
        let (response, closes) = scram_login(
            &mut conn,
            &security,
            &mut session,
            m,
            ("bob", "bob-secret"),
            2100,
        );
        assert_eq!(
            response.error_code,
            ResponseError::SaslAuthenticationFailed.code()
        );
        assert!(closes);
        assert!(
            response
                .error_message
                .unwrap()
                .contains("Cannot change principals")
        );
        assert_eq!(session.principal.to_string(), "User:alice");
        let (response, closes) = handshake(&mut conn, &session, "SCRAM-SHA-512");
        assert_eq!(response.error_code, ResponseError::IllegalSaslState.code());
        assert!(closes);
    }

    #[test]
    fn a_v0_handshake_takes_raw_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        let m = ScramMechanism::Sha512;
        let mut session = session(SecurityProtocol::SaslPlaintext);
        let mut conn = SaslConnection::new(settings("SCRAM-SHA-512", false, 0), session.protocol);
        let (response, _) = answer::<SaslHandshakeResponse>(
            conn.handshake(&session, &handshake_frame(0, m.name())),
            ApiKey::SaslHandshake,
            0,
        );
        assert_eq!(response.error_code, 0);
        let raw = |gate: Gate| match gate {
            Gate::Answer(bytes) => {
                let mut bytes = bytes.freeze();
                let length = bytes.get_i32();
                assert_eq!(length as usize, bytes.len());
                bytes
            }
            other => panic!("{other:?}"),
        };
        let mut client = ScramClient::new(m, "alice", PASSWORD, &scram::new_nonce());
        let first = raw(conn.gate(&security, &mut session, &Bytes::from(client.first()), 0));
        let last = client.last(&first).unwrap();
        let last = raw(conn.gate(&security, &mut session, &Bytes::from(last), 0));
        client.verify(&last).unwrap();
        assert_eq!(session.principal.to_string(), "User:alice");
        assert!(matches!(
            conn.gate(&security, &mut session, &metadata(), 0),
            Gate::Dispatch
        ));
    }

    #[tokio::test]
    async fn the_client_exchange_authenticates_against_the_gate() {
        let dir = tempfile::tempdir().unwrap();
        let security = store(dir.path());
        for (login, ok) in [
            (
                SaslLogin {
                    mechanism: SaslMechanism::Scram(ScramMechanism::Sha512),
                    username: "alice".into(),
                    password: PASSWORD.into(),
                },
                true,
            ),
            (
                SaslLogin {
                    mechanism: SaslMechanism::Plain,
                    username: "alice".into(),
                    password: PASSWORD.into(),
                },
                true,
            ),
            (
                SaslLogin {
                    mechanism: SaslMechanism::Scram(ScramMechanism::Sha256),
                    username: "alice".into(),
                    password: "guess".into(),
                },
                false,
            ),
        ] {
            let (mut client, mut server) = tokio::io::duplex(64 * 1024);
            let run = async {
                let mut session = session(SecurityProtocol::SaslSsl);
                let mut conn = SaslConnection::new(
                    settings("PLAIN,SCRAM-SHA-256,SCRAM-SHA-512", false, 0),
                    session.protocol,
                );
                while let Ok(Some(frame)) = crate::frame::read_frame(&mut server, 1 << 20).await {
                    match conn.gate(&security, &mut session, &frame, 0) {
                        Gate::Answer(bytes) => server.write_all(&bytes).await.unwrap(),
                        Gate::AnswerAndClose(bytes, _) | Gate::Failed(Some(bytes), _) => {
                            server.write_all(&bytes).await.unwrap();
                            break;
                        }
                        other => panic!("{other:?}"),
                    }
                    if session.principal != Principal::anonymous() {
                        break;
                    }
                }
                session.principal
            };
            let (result, principal) = tokio::join!(authenticate_client(&mut client, &login), run);
            assert_eq!(result.is_ok(), ok, "{login:?}: {result:?}");
            assert_eq!(principal.name == "alice", ok);
            if !ok {
                let e = result.unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
                assert!(e.to_string().contains("invalid credentials"), "{e}");
            }
        }
    }

    #[test]
    fn the_versions_served_are_the_ones_api_versions_advertises() {
        let advertised = |key: ApiKey| {
            crate::handler::SUPPORTED_APIS
                .iter()
                .find(|(k, _, _)| *k == key)
                .map(|&(_, min, max)| (min, max))
        };
        assert_eq!(advertised(ApiKey::SaslHandshake), Some(HANDSHAKE_VERSIONS));
        assert_eq!(
            advertised(ApiKey::SaslAuthenticate),
            Some(AUTHENTICATE_VERSIONS)
        );
    }

    #[test]
    fn settings_that_would_authenticate_no_one_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let check = |settings: &[(&str, &str)]| {
            let settings = settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let config = BrokerConfig::new(
                dir.path().to_path_buf(),
                "127.0.0.1:0".parse().unwrap(),
                None,
                None,
                settings,
            )
            .unwrap();
            check_config(&config)
        };
        let sasl = ("listeners", "SASL_PLAINTEXT://127.0.0.1:0");
        assert!(check(&[sasl]).is_ok());
        assert!(check(&[]).is_ok());
        let err = check(&[sasl, ("sasl.enabled.mechanisms", "PLAIN")]).unwrap_err();
        assert!(err.contains("offers no mechanism"), "{err}");
        let err = check(&[sasl, ("sasl.enabled.mechanisms", "GSSAPI")]).unwrap_err();
        assert!(err.contains("GSSAPI"), "{err}");
        // In a cluster, the brokers' own login on a SASL inter-broker listener.
        let cluster = ("controller.quorum.voters", "0@127.0.0.1:1");
        let err = check(&[sasl, cluster]).unwrap_err();
        assert!(err.contains("sasl.jaas.config"), "{err}");
        let jaas = (
            "sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"b\" password=\"p\";",
        );
        assert!(check(&[sasl, cluster, jaas]).is_ok());
        let err = check(&[
            sasl,
            cluster,
            jaas,
            ("sasl.enabled.mechanisms", "SCRAM-SHA-512"),
        ])
        .unwrap_err();
        assert!(err.contains("not offered"), "{err}");
    }

    #[test]
    fn jaas_configs_parse_as_kafka_writes_them() {
        let login = login_from_jaas(
            SaslMechanism::Scram(ScramMechanism::Sha256),
            r#"org.apache.kafka.common.security.scram.ScramLoginModule required
               username="admin" password="p\"w;d";"#,
        )
        .unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("admin", "p\"w;d")
        );
        assert!(!format!("{login:?}").contains("p\\\"w"));
        let plain = login_from_jaas(
            SaslMechanism::Plain,
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=u password=p;",
        )
        .unwrap();
        assert_eq!(plain.password, "p");
        for bad in [
            "",
            "ScramLoginModule required username=\"a\" password=\"b\"",
            "ScramLoginModule maybe username=\"a\" password=\"b\";",
            "ScramLoginModule required username=\"a;",
            "ScramLoginModule required username=\"a\";",
            "PlainLoginModule required username=\"a\" password=\"b\";",
        ] {
            assert!(
                login_from_jaas(SaslMechanism::Scram(ScramMechanism::Sha512), bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
