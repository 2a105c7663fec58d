//! Reading a request and deciding whether to believe it: the body under a size and time
//! limit, the provider's signature or token checked over the raw bytes in constant time
//! before anything is parsed, the event and delivery headers, the JSON (or GitHub's form).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde_json::Value;

use super::providers::Check;
use super::{Error, Provider, Result};
use crate::http::signature::{decode_hex, token_eq, verify_hex, verify_signature};

pub(super) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes> {
    // Refuse a declared oversize body without reading any of it.
    let declared = header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Error::TooLarge { limit });
    }
    let collect = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::BodyRead)?;
            if buf.len() + chunk.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    };
    tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| Error::BodyTimeout(timeout))?
}

pub(super) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub(super) fn first_header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names.iter().find_map(|n| header_str(headers, n))
}

/// The header that carries the provider's signature or token.
pub(super) fn has_credentials(provider: Provider, headers: &HeaderMap) -> bool {
    first_header(headers, provider.spec().credential_headers).is_some()
}

pub(super) fn verify(
    provider: Provider,
    headers: &HeaderMap,
    secret: &[u8],
    body: &[u8],
) -> Result<()> {
    let spec = provider.spec();
    let given = first_header(headers, spec.credential_headers);
    let ok = given.is_some_and(|given| match spec.check {
        Check::Token => token_eq(given.as_bytes(), secret),
        Check::Signature => verify_signature(secret, body, given),
        Check::Hex => verify_hex(secret, body, given),
        Check::Basic => basic_password(given).is_some_and(|p| token_eq(&p, secret)),
    });
    if ok { Ok(()) } else { Err(Error::Unauthorized) }
}

/// The password of an `Authorization: Basic` header.
fn basic_password(value: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

pub(super) enum Event {
    Push,
    Ping,
    Other,
}

pub(super) fn event(provider: Provider, headers: &HeaderMap) -> Result<Event> {
    let spec = provider.spec();
    let Some(first) = spec.event_headers.first() else {
        return Ok(Event::Push);
    };
    let value = first_header(headers, spec.event_headers).ok_or(Error::MissingHeader(first))?;
    Ok(if spec.push_events.contains(&value) {
        Event::Push
    } else if spec.ping_events.contains(&value) {
        Event::Ping
    } else {
        Event::Other
    })
}

pub(super) fn delivery_header(provider: Provider, headers: &HeaderMap) -> Option<&str> {
    first_header(headers, provider.spec().delivery_headers)
}

/// The JSON document of a verified body.
pub(super) fn decode(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let media = header_str(headers, header::CONTENT_TYPE.as_str())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .ok_or(Error::UnsupportedMediaType)?;
    let json = match media.as_str() {
        "application/json" => body.to_vec(),
        // GitHub's "application/x-www-form-urlencoded" content type: JSON in `payload=`.
        "application/x-www-form-urlencoded" if provider == Provider::Github => form_payload(body)?,
        _ => return Err(Error::UnsupportedMediaType),
    };
    serde_json::from_slice(&json).map_err(Error::Json)
}

pub(super) fn form_payload(body: &[u8]) -> Result<Vec<u8>> {
    let value = body
        .split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(b"payload="))
        .ok_or(Error::Form("no payload field"))?;
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(decode_hex)
                    .ok_or(Error::Form("bad percent-encoding"))?;
                out.extend_from_slice(&hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}
