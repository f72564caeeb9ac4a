//! A small blocking Kafka protocol client for the admin subcommands, built on the same codecs as
//! the broker (`kafka-protocol`). It talks to any Kafka-compatible broker, Strata included.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

/// Largest response accepted (bounds the allocation a broker could size).
const RESPONSE_MAX_BYTES: usize = 100 * 1024 * 1024;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to one broker.
#[derive(Debug)]
pub struct AdminClient {
    stream: TcpStream,
    bootstrap: String,
    correlation_id: i32,
}

impl AdminClient {
    /// Connects to `bootstrap` (`host:port`).
    pub fn connect(bootstrap: &str) -> Result<Self> {
        let stream = TcpStream::connect(bootstrap)
            .with_context(|| format!("connecting to the broker at {bootstrap}"))?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            bootstrap: bootstrap.to_string(),
            correlation_id: 0,
        })
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
