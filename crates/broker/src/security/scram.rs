//! SCRAM (RFC 5802, with SHA-256 and SHA-512 as RFC 7677 and Kafka name them): the credentials a
//! broker stores, and both ends of the exchange as pure state machines (no I/O, the nonces given
//! by the caller so that tests are deterministic).
//!
//! A credential is what RFC 5802 lets a server keep instead of the password: a salt, an iteration
//! count, `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
//! `ServerKey = HMAC(SaltedPassword, "Server Key")`, where `SaltedPassword = PBKDF2-HMAC(password,
//! salt, iterations)`. It lets the server check a client's proof, but neither recover the password
//! nor compute a proof without it.
//!
//! Credentials live in the security store under kind [`STORE_KIND`], key `<MECHANISM>/<user>`
//! ([`store_key`]), as JSON ([`ScramCredential::to_json`]).
//!
//! No channel binding (Kafka has none): the client's GS2 header is `n,,` (or `y,,`, a client able
//! to bind that believes the server is not); an authorization id, when given, must be the user.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit as _, Mac as _};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

#[cfg(test)]
thread_local! {
    /// PBKDF2 iterations run on this thread: tests count the work a code path does with it
    /// (timing alone would make flaky tests).
    pub(crate) static PBKDF2_ITERATIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The security store kind holding SCRAM credentials.
pub const STORE_KIND: &str = "scram";
/// Fewest PBKDF2 iterations accepted (Kafka's minimum, RFC 7677's recommendation).
pub const ITERATIONS_MIN: u32 = 4096;
/// Most PBKDF2 iterations accepted (Kafka's maximum): a credential's iteration count is work
/// every client login must do.
pub const ITERATIONS_MAX: u32 = 16384;
/// Iterations of a credential created without an explicit count (Kafka's `kafka-configs`
/// default).
pub const ITERATIONS_DEFAULT: u32 = 8192;
/// Bytes of salt generated for a new credential.
pub const SALT_BYTES: usize = 32;
/// Bytes of randomness in a generated nonce (before base64).
const NONCE_BYTES: usize = 24;
/// Longest SCRAM message accepted from a peer: user names, nonces and proofs are short; this
/// bounds what a hostile client makes the broker parse.
pub const MESSAGE_BYTES_MAX: usize = 4096;

/// A SCRAM mechanism Strata supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramMechanism {
    /// `SCRAM-SHA-256` (RFC 7677).
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

impl ScramMechanism {
    /// Every supported mechanism.
    pub const ALL: [Self; 2] = [Self::Sha256, Self::Sha512];

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// The mechanism named `name` (SASL names are upper case; accepted in any case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The mechanism's code in DescribeUserScramCredentials / AlterUserScramCredentials
    /// (KIP-554: 1 is SCRAM-SHA-256, 2 is SCRAM-SHA-512; 0 is unknown).
    pub fn kafka_type(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    /// The mechanism of a KIP-554 code.
    pub fn from_kafka_type(code: i8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.kafka_type() == code)
    }

    /// Bytes of the hash's output (and so of every key).
    pub fn hash_bytes(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// `Hi(password, salt, i)` of RFC 5802: PBKDF2 with HMAC of this hash.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        #[cfg(test)]
        PBKDF2_ITERATIONS.with(|n| n.set(n.get() + u64::from(iterations)));
        let mut out = vec![0u8; self.hash_bytes()];
        match self {
            Self::Sha256 => {
                pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out)
            }
            Self::Sha512 => {
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out)
            }
        }
        out
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Self::Sha512 => {
                let mut mac = hmac::Hmac::<sha2::Sha512>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    fn client_key(self, salted_password: &[u8]) -> Vec<u8> {
        self.hmac(salted_password, b"Client Key")
    }

    fn server_key(self, salted_password: &[u8]) -> Vec<u8> {
        self.hmac(salted_password, b"Server Key")
    }
}

impl fmt::Display for ScramMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The security store key of `user`'s credential for `mechanism`: `SCRAM-SHA-256/alice`.
pub fn store_key(mechanism: ScramMechanism, user: &str) -> String {
    format!("{}/{user}", mechanism.name())
}

/// The mechanism and user of a store key written by [`store_key`].
pub fn parse_store_key(key: &str) -> Option<(ScramMechanism, &str)> {
    let (mechanism, user) = key.split_once('/')?;
    Some((ScramMechanism::parse(mechanism)?, user))
}

/// Why a credential cannot be made or stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Too few or too many PBKDF2 iterations.
    #[error("{iterations} iterations is outside {min}..={max}", min = ITERATIONS_MIN, max = ITERATIONS_MAX)]
    Iterations {
        /// The count given.
        iterations: i64,
    },
    /// An empty salt, or a salted password of the wrong length.
    #[error("{0}")]
    Invalid(String),
}

/// A user's stored SCRAM credential: never the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramCredential {
    /// The salt, random per credential.
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// `H(ClientKey)`: what a client's proof is checked against.
    #[serde(with = "base64_bytes")]
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`: signs the server's final message.
    #[serde(with = "base64_bytes")]
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramCredential {
    // The keys are password equivalents for this broker: never printed, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Checks an iteration count against Kafka's bounds.
pub fn check_iterations(iterations: i64) -> Result<u32, CredentialError> {
    if (i64::from(ITERATIONS_MIN)..=i64::from(ITERATIONS_MAX)).contains(&iterations) {
        Ok(iterations as u32)
    } else {
        Err(CredentialError::Iterations { iterations })
    }
}

impl ScramCredential {
    /// The credential of `password` with a fresh random salt.
    pub fn new(
        mechanism: ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> Result<Self, CredentialError> {
        Self::with_salt(mechanism, password, random_bytes(SALT_BYTES), iterations)
    }

    /// The credential of `password` with `salt`.
    pub fn with_salt(
        mechanism: ScramMechanism,
        password: &str,
        salt: Vec<u8>,
        iterations: u32,
    ) -> Result<Self, CredentialError> {
        let salted = mechanism.salted_password(password.as_bytes(), &salt, iterations);
        Self::from_salted_password(mechanism, salt, &salted, i64::from(iterations))
    }

    /// The credential of a password salted by the client (AlterUserScramCredentials sends the
    /// salt and `SaltedPassword`, never the password).
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salt: Vec<u8>,
        salted_password: &[u8],
        iterations: i64,
    ) -> Result<Self, CredentialError> {
        let iterations = check_iterations(iterations)?;
        if salt.is_empty() {
            return Err(CredentialError::Invalid("the salt is empty".into()));
        }
        if salted_password.len() != mechanism.hash_bytes() {
            return Err(CredentialError::Invalid(format!(
                "a {mechanism} salted password is {} bytes long, not {}",
                salted_password.len(),
                mechanism.hash_bytes()
            )));
        }
        Ok(Self {
            salt,
            iterations,
            stored_key: mechanism.hash(&mechanism.client_key(salted_password)),
            server_key: mechanism.server_key(salted_password),
        })
    }

    /// The JSON stored in the security store.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a credential serializes")
    }

    /// A stored credential, checked: keys of the mechanism's length, iterations in bounds.
    pub fn from_json(mechanism: ScramMechanism, json: &str) -> Result<Self, CredentialError> {
        let credential: Self = serde_json::from_str(json)
            .map_err(|e| CredentialError::Invalid(format!("a stored credential: {e}")))?;
        check_iterations(i64::from(credential.iterations))?;
        let n = mechanism.hash_bytes();
        if credential.stored_key.len() != n || credential.server_key.len() != n {
            return Err(CredentialError::Invalid(format!(
                "a stored {mechanism} credential has keys of the wrong length"
            )));
        }
        Ok(credential)
    }

    /// Whether `password` is the one this credential was made from (SASL/PLAIN checks passwords
    /// this way). Costs one PBKDF2; compares in constant time.
    pub fn verify_password(&self, mechanism: ScramMechanism, password: &str) -> bool {
        let salted = mechanism.salted_password(password.as_bytes(), &self.salt, self.iterations);
        let stored_key = mechanism.hash(&mechanism.client_key(&salted));
        stored_key.ct_eq(&self.stored_key).into()
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// `n` bytes from the thread's CSPRNG (ChaCha, seeded from the operating system).
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A fresh nonce: printable, no comma (RFC 5802 `printable`), 192 random bits.
pub fn new_nonce() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(NONCE_BYTES))
}

/// Why an exchange failed. The client is told only that authentication failed (as Kafka does);
/// the reason goes to the audit log, so it never holds a proof, key or password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding requested (`p=`), which Kafka's SCRAM does not have.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// An authorization id other than the user (Kafka refuses those too).
    #[error("the authorization id differs from the user name")]
    AuthorizationId,
    /// An extension this server does not implement (`tokenauth`: delegation tokens).
    #[error("unsupported SCRAM extension {0:?}")]
    Extension(String),
    /// No credential for the user and mechanism.
    #[error("unknown user")]
    UnknownUser,
    /// The final message's nonce is not the one the server sent.
    #[error("the nonce does not match")]
    Nonce,
    /// The final message's channel binding is not the GS2 header of the first message.
    #[error("the channel binding does not match the GS2 header")]
    ChannelBindingMismatch,
    /// The client's proof does not match the stored credential: a wrong password.
    #[error("invalid client proof")]
    InvalidProof,
    /// A message out of turn (after the exchange ended or failed).
    #[error("unexpected SCRAM message in state {0}")]
    State(&'static str),
    /// The server's answer (client side): an `e=` error, a wrong signature, a short salt.
    #[error("{0}")]
    Server(String),
}

/// Decodes a `saslname` (RFC 5802: `=2C` is a comma, `=3D` an equals sign, no other `=`).
fn decode_saslname(text: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3);
        match escape {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(out)
}

/// Encodes a user name as a `saslname`.
fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The value of `part`, which must be attribute `name` (`name=value`, `name` ASCII).
fn attribute(part: Option<&str>, name: char) -> Result<&str, ScramError> {
    let part = part.ok_or(ScramError::Malformed("missing attribute"))?;
    let mut chars = part.chars();
    if chars.next() != Some(name) || chars.next() != Some('=') {
        return Err(ScramError::Malformed("unexpected attribute"));
    }
    Ok(&part[2..])
}

fn utf8(message: &[u8]) -> Result<&str, ScramError> {
    if message.len() > MESSAGE_BYTES_MAX {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// A client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientFirst {
    /// `n,,` or `n,a=user,`: echoed (base64) in the final message's `c=`.
    gs2_header: String,
    user: String,
    nonce: String,
    /// Everything after the GS2 header: part of the AuthMessage.
    bare: String,
}

fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = utf8(message)?;
    let mut parts = text.splitn(3, ',');
    let flag = parts.next().unwrap_or_default();
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad GS2 channel binding flag")),
    }
    let authzid = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
    let bare = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
    let gs2_header = format!("{flag},{authzid},");
    let mut attributes = bare.split(',');
    let mut first = attributes.next();
    if first.is_some_and(|a| a.starts_with("m=")) {
        return Err(ScramError::Extension("m".into()));
    }
    let user = decode_saslname(attribute(first.take(), 'n')?)?;
    let nonce = attribute(attributes.next(), 'r')?;
    if !is_printable_nonce(nonce) {
        return Err(ScramError::Malformed("bad client nonce"));
    }
    for extension in attributes {
        let (name, value) = extension
            .split_once('=')
            .ok_or(ScramError::Malformed("bad extension"))?;
        // Kafka's delegation tokens authenticate with `tokenauth=true`; Strata has none, and
        // no other extension changes what the exchange proves.
        if name == "tokenauth" && value.eq_ignore_ascii_case("true") {
            return Err(ScramError::Extension(name.into()));
        }
    }
    if !authzid.is_empty() {
        let authzid = authzid
            .strip_prefix("a=")
            .ok_or(ScramError::Malformed("bad authorization id"))?;
        if decode_saslname(authzid)? != user {
            return Err(ScramError::AuthorizationId);
        }
    }
    Ok(ClientFirst {
        gs2_header,
        user,
        nonce: nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// The server end of one exchange: [`ScramServer::first`], then [`ScramServer::last`]. One
/// exchange per value: a message replayed into another exchange meets another server nonce.
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: ServerState,
}

enum ServerState {
    Start,
    SentFirst {
        user: String,
        /// `None` for an unknown user: the exchange runs on with a decoy salt so that a client
        /// cannot tell unknown users from wrong passwords, and fails at the end.
        credential: Option<ScramCredential>,
        gs2_header: String,
        nonce: String,
        /// `client-first-bare "," server-first`: the start of the AuthMessage.
        auth_start: String,
    },
    Ended,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            ServerState::Start => "start",
            ServerState::SentFirst { .. } => "sent-first",
            ServerState::Ended => "ended",
        };
        f.debug_struct("ScramServer")
            .field("mechanism", &self.mechanism)
            .field("state", &state)
            .finish()
    }
}

impl ScramServer {
    /// A new exchange.
    pub fn new(mechanism: ScramMechanism) -> Self {
        Self {
            mechanism,
            state: ServerState::Start,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// The user the client named in its first message, once it was read.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            ServerState::SentFirst { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Reads the client's first message and answers the server's first. `credential` looks up
    /// the user's credential; `server_nonce` is appended to the client's nonce ([`new_nonce`]).
    pub fn first(
        &mut self,
        message: &[u8],
        credential: impl FnOnce(&str) -> Option<ScramCredential>,
        server_nonce: &str,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, ServerState::Start) {
            self.state = ServerState::Ended;
            return Err(ScramError::State("after the first message"));
        }
        self.state = ServerState::Ended;
        let first = parse_client_first(message)?;
        let credential = credential(&first.user);
        let (salt, iterations) = match &credential {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (decoy_salt(self.mechanism, &first.user), ITERATIONS_DEFAULT),
        };
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!("r={nonce},s={},i={iterations}", BASE64.encode(&salt));
        self.state = ServerState::SentFirst {
            auth_start: format!("{},{server_first}", first.bare),
            user: first.user,
            credential,
            gs2_header: first.gs2_header,
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Reads the client's final message: checks the channel binding, the nonce and the proof
    /// (in constant time), and answers the server's final message (its signature) with the
    /// authenticated user.
    pub fn last(&mut self, message: &[u8]) -> Result<(Vec<u8>, String), ScramError> {
        let ServerState::SentFirst {
            user,
            credential,
            gs2_header,
            nonce,
            auth_start,
        } = std::mem::replace(&mut self.state, ServerState::Ended)
        else {
            return Err(ScramError::State("not after a first message"));
        };
        let text = utf8(message)?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attribute(attributes.next(), 'c')?;
        let binding = BASE64
            .decode(binding)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if binding != gs2_header.as_bytes() {
            return Err(ScramError::ChannelBindingMismatch);
        }
        let client_nonce = attribute(attributes.next(), 'r')?;
        if !bool::from(client_nonce.as_bytes().ct_eq(nonce.as_bytes())) {
            return Err(ScramError::Nonce);
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let Some(credential) = credential else {
            return Err(ScramError::UnknownUser);
        };
        let m = self.mechanism;
        if proof.len() != m.hash_bytes() {
            return Err(ScramError::InvalidProof);
        }
        let auth_message = format!("{auth_start},{without_proof}");
        let client_signature = m.hmac(&credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        if !bool::from(m.hash(&client_key).ct_eq(&credential.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        let server_signature = m.hmac(&credential.server_key, auth_message.as_bytes());
        let last = format!("v={}", BASE64.encode(server_signature));
        Ok((last.into_bytes(), user))
    }
}

/// The salt shown for a user without a credential: stable per user and process (a client asking
/// twice sees the same), unrelated to any real salt.
fn decoy_salt(mechanism: ScramMechanism, user: &str) -> Vec<u8> {
    static SECRET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| random_bytes(32));
    let mut salt = mechanism.hmac(secret, format!("{mechanism}/{user}").as_bytes());
    salt.truncate(SALT_BYTES);
    salt
}

/// The client end of one exchange: [`ScramClient::first`], [`ScramClient::last`] with the
/// server's first message, then [`ScramClient::verify`] with the server's final one.
pub struct ScramClient {
    mechanism: ScramMechanism,
    user: String,
    password: String,
    nonce: String,
    /// After `last`: the server signature expected.
    server_signature: Option<Vec<u8>>,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A new exchange for `user` with `password`; `nonce` from [`new_nonce`].
    pub fn new(mechanism: ScramMechanism, user: &str, password: &str, nonce: &str) -> Self {
        Self {
            mechanism,
            user: user.to_string(),
            password: password.to_string(),
            nonce: nonce.to_string(),
            server_signature: None,
        }
    }

    fn first_bare(&self) -> String {
        format!("n={},r={}", encode_saslname(&self.user), self.nonce)
    }

    /// The client's first message.
    pub fn first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare()).into_bytes()
    }

    /// Reads the server's first message and answers the client's final one (with the proof).
    pub fn last(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = utf8(server_first)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::Server(format!("the server refused: {error}")));
        }
        let mut attributes = text.split(',');
        if attributes
            .clone()
            .next()
            .is_some_and(|a| a.starts_with("m="))
        {
            return Err(ScramError::Extension("m".into()));
        }
        let nonce = attribute(attributes.next(), 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let salt = BASE64
            .decode(attribute(attributes.next(), 's')?)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        let iterations: u32 = attribute(attributes.next(), 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("bad iteration count"))?;
        // A server asking for fewer iterations than Kafka's minimum weakens the proof a
        // listener could capture; more than the maximum is a denial of service on the client.
        check_iterations(i64::from(iterations)).map_err(|e| ScramError::Server(e.to_string()))?;
        let m = self.mechanism;
        let salted = m.salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = m.client_key(&salted);
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", BASE64.encode("n,,"));
        let auth_message = format!("{},{text},{without_proof}", self.first_bare());
        let client_signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.server_signature = Some(m.hmac(&m.server_key(&salted), auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes())
    }

    /// Checks the server's final message: the server proved it holds the credential.
    pub fn verify(&self, server_last: &[u8]) -> Result<(), ScramError> {
        let text = utf8(server_last)?;
        if let Some(error) = text.strip_prefix("e=") {
            return Err(ScramError::Server(format!("the server refused: {error}")));
        }
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramError::State("before the final message"))?;
        let signature = BASE64
            .decode(attribute(Some(text), 'v')?)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        if bool::from(signature.ct_eq(expected)) {
            Ok(())
        } else {
            Err(ScramError::Server(
                "the server's signature does not match: it does not hold this user's credential"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil".
    const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC7677_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_credential() -> ScramCredential {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredential::with_salt(ScramMechanism::Sha256, "pencil", salt, 4096).unwrap()
    }

    #[test]
    fn the_server_reproduces_the_rfc_7677_exchange() {
        let credential = rfc7677_credential();
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        let first = server
            .first(
                RFC7677_CLIENT_FIRST.as_bytes(),
                |user| (user == "user").then(|| credential.clone()),
                RFC7677_SERVER_NONCE,
            )
            .unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), RFC7677_SERVER_FIRST);
        let (last, user) = server.last(RFC7677_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), RFC7677_SERVER_FINAL);
        assert_eq!(user, "user");
    }

    #[test]
    fn the_client_reproduces_the_rfc_7677_exchange() {
        let mut client = ScramClient::new(
            ScramMechanism::Sha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        assert_eq!(client.first(), RFC7677_CLIENT_FIRST.as_bytes());
        let last = client.last(RFC7677_SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), RFC7677_CLIENT_FINAL);
        client.verify(RFC7677_SERVER_FINAL.as_bytes()).unwrap();
        let forged = "v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert!(matches!(
            client.verify(forged.as_bytes()),
            Err(ScramError::Server(_))
        ));
    }

    /// Runs one exchange of `password` against a credential made from `stored`.
    fn exchange(
        mechanism: ScramMechanism,
        user: &str,
        stored: &str,
        password: &str,
    ) -> Result<String, ScramError> {
        let credential = ScramCredential::new(mechanism, stored, ITERATIONS_MIN).unwrap();
        let mut client = ScramClient::new(mechanism, user, password, &new_nonce());
        let mut server = ScramServer::new(mechanism);
        let first = server.first(&client.first(), |_| Some(credential), &new_nonce())?;
        let last = client.last(&first)?;
        let (answer, user) = server.last(&last)?;
        client.verify(&answer)?;
        Ok(user)
    }

    #[test]
    fn both_mechanisms_complete_an_exchange_and_escape_user_names() {
        for mechanism in ScramMechanism::ALL {
            assert_eq!(
                exchange(mechanism, "al=i,ce", "secret", "secret").unwrap(),
                "al=i,ce"
            );
        }
    }

    #[test]
    fn a_wrong_password_fails_on_the_proof() {
        for mechanism in ScramMechanism::ALL {
            assert_eq!(
                exchange(mechanism, "alice", "secret", "guess"),
                Err(ScramError::InvalidProof)
            );
        }
    }

    #[test]
    fn an_unknown_user_sees_a_stable_decoy_salt_and_fails_at_the_end() {
        let m = ScramMechanism::Sha256;
        let run = || {
            let mut client = ScramClient::new(m, "mallory", "x", &new_nonce());
            let mut server = ScramServer::new(m);
            let first = server
                .first(&client.first(), |_| None, &new_nonce())
                .unwrap();
            let last = client.last(&first).unwrap();
            (first, server.last(&last))
        };
        let (first_a, result) = run();
        assert_eq!(result, Err(ScramError::UnknownUser));
        let (first_b, _) = run();
        let salt = |m: &[u8]| {
            String::from_utf8(m.to_vec())
                .unwrap()
                .split(',')
                .nth(1)
                .unwrap()
                .to_string()
        };
        assert_eq!(salt(&first_a), salt(&first_b));
    }

    #[test]
    fn a_tampered_nonce_is_refused() {
        let m = ScramMechanism::Sha256;
        let credential = ScramCredential::new(m, "secret", ITERATIONS_MIN).unwrap();
        let mut client = ScramClient::new(m, "alice", "secret", "clientnonce");
        let mut server = ScramServer::new(m);
        let first = server
            .first(&client.first(), |_| Some(credential), "servernonce")
            .unwrap();
        // The client's answer, with the server's half of the nonce changed.
        let last = String::from_utf8(client.last(&first).unwrap()).unwrap();
        let tampered = last.replace("clientnonceservernonce", "clientnonceservernoncX");
        assert_eq!(server.last(tampered.as_bytes()), Err(ScramError::Nonce));
        // A server first message whose nonce does not extend the client's is refused too.
        let mut client = ScramClient::new(m, "alice", "secret", "clientnonce");
        let forged = format!("r=othernonce,s={},i=4096", BASE64.encode(b"salt"));
        assert_eq!(client.last(forged.as_bytes()), Err(ScramError::Nonce));
    }

    #[test]
    fn a_replayed_final_message_is_refused() {
        let m = ScramMechanism::Sha512;
        let credential = ScramCredential::new(m, "secret", ITERATIONS_MIN).unwrap();
        let mut client = ScramClient::new(m, "alice", "secret", "fixed-client-nonce");
        let mut server = ScramServer::new(m);
        let first = server
            .first(&client.first(), |_| Some(credential.clone()), &new_nonce())
            .unwrap();
        let recorded = client.last(&first).unwrap();
        server.last(&recorded).unwrap();
        // The same exchange cannot be finished twice...
        assert!(matches!(server.last(&recorded), Err(ScramError::State(_))));
        // ...and a new exchange, even with the same client first message, has a new server
        // nonce that the recorded final message does not carry.
        let mut again = ScramServer::new(m);
        again
            .first(&client.first(), |_| Some(credential), &new_nonce())
            .unwrap();
        assert_eq!(again.last(&recorded), Err(ScramError::Nonce));
    }

    #[test]
    fn channel_binding_authzid_and_malformed_messages_are_refused() {
        let m = ScramMechanism::Sha256;
        let first = |message: &str| {
            ScramServer::new(m)
                .first(message.as_bytes(), |_| None, "s")
                .map(|_| ())
        };
        assert_eq!(
            first("p=tls-unique,,n=a,r=x"),
            Err(ScramError::ChannelBinding)
        );
        assert_eq!(
            first("n,a=bob,n=alice,r=x"),
            Err(ScramError::AuthorizationId)
        );
        assert!(first("n,a=alice,n=alice,r=x").is_ok());
        assert!(first("y,,n=alice,r=x").is_ok());
        assert_eq!(
            first("n,,n=alice,r=x,tokenauth=true"),
            Err(ScramError::Extension("tokenauth".into()))
        );
        for bad in [
            "",
            "n",
            "n,,",
            "n,,r=x",
            "n,,n=,r=x",
            "n,,n=a=b,r=x",
            "n,,n=alice",
            "n,,n=alice,r=",
            "n,,n=alice,r=a b",
            "x,,n=alice,r=x",
        ] {
            assert!(
                matches!(first(bad), Err(ScramError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ScramServer::new(m).first(&[0xff, 0xfe], |_| None, "s"),
            Err(ScramError::Malformed(_))
        ));
        assert!(matches!(
            ScramServer::new(m).first(&vec![b'a'; MESSAGE_BYTES_MAX + 1], |_| None, "s"),
            Err(ScramError::Malformed(_))
        ));
        // A final message whose channel binding is not the first message's GS2 header.
        let credential = ScramCredential::new(m, "pw", ITERATIONS_MIN).unwrap();
        let mut server = ScramServer::new(m);
        server
            .first(b"n,,n=alice,r=abc", |_| Some(credential), "def")
            .unwrap();
        let proof = BASE64.encode([0u8; 32]);
        let last = format!("c={},r=abcdef,p={proof}", BASE64.encode("y,,"));
        assert_eq!(
            server.last(last.as_bytes()),
            Err(ScramError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn credentials_round_trip_through_json_without_the_password() {
        for m in ScramMechanism::ALL {
            let credential = ScramCredential::new(m, "hunter2", ITERATIONS_DEFAULT).unwrap();
            let json = credential.to_json();
            assert!(!json.contains("hunter2"));
            let back = ScramCredential::from_json(m, &json).unwrap();
            assert_eq!(back, credential);
            assert!(back.verify_password(m, "hunter2"));
            assert!(!back.verify_password(m, "hunter3"));
            assert!(!format!("{credential:?}").contains(&BASE64.encode(&credential.stored_key)));
        }
        // A SHA-256 credential is not a valid SHA-512 one.
        let json = ScramCredential::new(ScramMechanism::Sha256, "x", ITERATIONS_MIN)
            .unwrap()
            .to_json();
        assert!(ScramCredential::from_json(ScramMechanism::Sha512, &json).is_err());
        assert!(ScramCredential::from_json(ScramMechanism::Sha256, "{}").is_err());
    }

    #[test]
    fn a_salted_password_from_a_client_gives_the_same_credential() {
        let m = ScramMechanism::Sha512;
        let salt = b"NaCl".to_vec();
        let salted = m.salted_password(b"pw", &salt, 5000);
        let from_client = ScramCredential::from_salted_password(m, salt.clone(), &salted, 5000);
        let here = ScramCredential::with_salt(m, "pw", salt.clone(), 5000).unwrap();
        assert_eq!(from_client.unwrap(), here);
        assert_eq!(
            ScramCredential::from_salted_password(m, salt.clone(), &salted, 4095),
            Err(CredentialError::Iterations { iterations: 4095 })
        );
        assert_eq!(
            ScramCredential::from_salted_password(m, salt.clone(), &salted, 16385),
            Err(CredentialError::Iterations { iterations: 16385 })
        );
        assert!(ScramCredential::from_salted_password(m, salt, &salted[..10], 5000).is_err());
        assert!(ScramCredential::from_salted_password(m, Vec::new(), &salted, 5000).is_err());
    }

    #[test]
    fn mechanisms_and_store_keys_parse() {
        assert_eq!(
            ScramMechanism::parse("scram-sha-512"),
            Some(ScramMechanism::Sha512)
        );
        assert_eq!(ScramMechanism::parse("PLAIN"), None);
        assert_eq!(
            ScramMechanism::from_kafka_type(1),
            Some(ScramMechanism::Sha256)
        );
        assert_eq!(ScramMechanism::from_kafka_type(0), None);
        let key = store_key(ScramMechanism::Sha256, "a/b");
        assert_eq!(key, "SCRAM-SHA-256/a/b");
        assert_eq!(parse_store_key(&key), Some((ScramMechanism::Sha256, "a/b")));
        assert_eq!(parse_store_key("PLAIN/a"), None);
    }
}
