//! A JSON Web Key Set: the public keys of an identity provider, chosen by `kid`.
//! Read from a file or fetched from a URL at start, again every `jwks_refresh`,
//! and again when a token names a `kid` the set lacks (a provider rotating its
//! keys), but never twice within `jwks_min_refetch`: tokens with made-up `kid`s
//! cannot turn the server into a load on the provider.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use parking_lot::{Mutex, RwLock};
use tracing::{debug, info, warn};

/// The largest JWKS document read; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The most keys kept from one JWKS; real ones hold two or three.
const MAX_KEYS: usize = 64;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a JWKS comes from: `https://…`/`http://…` is a URL, anything else a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    pub fn parse(text: &str) -> JwksSource {
        if text.starts_with("https://") || text.starts_with("http://") {
            JwksSource::Url(text.to_owned())
        } else {
            JwksSource::File(PathBuf::from(text))
        }
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::File(path) => write!(f, "{}", path.display()),
            JwksSource::Url(url) => f.write_str(url),
        }
    }
}

/// The type of a key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFamily {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

type KeySet = HashMap<String, (DecodingKey, KeyFamily)>;

pub(crate) struct Jwks {
    source: JwksSource,
    client: reqwest::Client,
    /// Swapped whole on each successful fetch; never held across an `.await`.
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started, for the floor between fetches.
    last_fetch: Mutex<Instant>,
    min_refetch: Duration,
}

impl Jwks {
    /// Loads the set once (an error stops the server at start, naming `jwks`) and
    /// keeps it fresh every `refresh` for as long as it is in use.
    pub(crate) async fn start(
        source: JwksSource,
        refresh: Duration,
        min_refetch: Duration,
    ) -> anyhow::Result<Arc<Jwks>> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .context("jwks: cannot build the HTTP client")?;
        let jwks = Arc::new(Jwks {
            source,
            client,
            keys: RwLock::new(Arc::default()),
            last_fetch: Mutex::new(Instant::now()),
            min_refetch,
        });
        let keys = jwks.load().await.with_context(|| format!("jwks: {}", jwks.source))?;
        info!(source = %jwks.source, keys = keys.len(), "JWKS loaded");
        *jwks.keys.write() = Arc::new(keys);
        tokio::spawn(refresh_every(Arc::downgrade(&jwks), refresh));
        Ok(jwks)
    }

    /// The key a token's `kid` names; without a `kid`, the set's only key.
    pub(crate) async fn key(&self, kid: Option<&str>) -> Result<(DecodingKey, KeyFamily), String> {
        if let Some(found) = self.find(kid)? {
            return Ok(found);
        }
        // Perhaps the provider rotated its keys since the last fetch.
        if self.claim_refetch() {
            self.refresh().await;
            if let Some(found) = self.find(kid)? {
                return Ok(found);
            }
        }
        Err(format!("unknown key id '{}': no key of the JWKS has it", kid.unwrap_or_default()))
    }

    fn find(&self, kid: Option<&str>) -> Result<Option<(DecodingKey, KeyFamily)>, String> {
        let keys = self.keys.read().clone();
        match kid {
            Some(kid) => Ok(keys.get(kid).cloned()),
            None if keys.len() == 1 => Ok(keys.values().next().cloned()),
            None => Err(format!(
                "the token has no 'kid' and the JWKS holds {} keys: name one",
                keys.len()
            )),
        }
    }

    /// Whether this caller may fetch now (the floor has passed); if so, the floor
    /// starts again, so concurrent callers do not fetch too.
    fn claim_refetch(&self) -> bool {
        let mut last = self.last_fetch.lock();
        if last.elapsed() < self.min_refetch {
            return false;
        }
        *last = Instant::now();
        true
    }

    /// Fetches the set again; a failure keeps the keys there are.
    async fn refresh(&self) {
        match self.load().await {
            Ok(keys) => {
                debug!(source = %self.source, keys = keys.len(), "JWKS refreshed");
                *self.keys.write() = Arc::new(keys);
            }
            Err(error) => {
                warn!(source = %self.source, error = format!("{error:#}"), "JWKS refresh failed; keeping the keys there are");
            }
        }
    }

    async fn load(&self) -> anyhow::Result<KeySet> {
        let bytes = match &self.source {
            JwksSource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                anyhow::ensure!(
                    bytes.len() <= MAX_JWKS_BYTES,
                    "larger than {MAX_JWKS_BYTES} bytes"
                );
                bytes
            }
            JwksSource::Url(url) => self.fetch(url).await?,
        };
        parse(&bytes)
    }

    async fn fetch(&self, url: &str) -> anyhow::Result<Vec<u8>> {
        let mut response = self.client.get(url).send().await?.error_for_status()?;
        if response.content_length().is_some_and(|length| length > MAX_JWKS_BYTES as u64) {
            anyhow::bail!("the response is larger than {MAX_JWKS_BYTES} bytes");
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            anyhow::ensure!(
                body.len() + chunk.len() <= MAX_JWKS_BYTES,
                "the response is larger than {MAX_JWKS_BYTES} bytes"
            );
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

async fn refresh_every(jwks: Weak<Jwks>, period: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(jwks) = jwks.upgrade() else { return };
        *jwks.last_fetch.lock() = Instant::now();
        jwks.refresh().await;
    }
}

/// The signing keys of a JWKS document, by `kid`. Keys for encryption, secret
/// (`oct`) keys, which have no place in a published set, and keys of types
/// this server does not know are skipped.
fn parse(bytes: &[u8]) -> anyhow::Result<KeySet> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document =
        serde_json::from_slice(bytes).context("not a JWKS: a JSON object with \"keys\"")?;
    let mut keys = KeySet::new();
    for (index, value) in document.keys.into_iter().enumerate() {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                debug!(index, %error, "JWKS: key skipped");
                continue;
            }
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            debug!(index, "JWKS: key without a kid skipped");
            continue;
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(key) => key,
            Err(error) => {
                debug!(index, %kid, %error, "JWKS: key skipped");
                continue;
            }
        };
        anyhow::ensure!(keys.len() < MAX_KEYS, "more than {MAX_KEYS} keys");
        keys.insert(kid, (key, family));
    }
    anyhow::ensure!(!keys.is_empty(), "no signing key with a kid");
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signing_keys_and_skips_the_rest() {
        let doc = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "unknown", "kid": "x"}
        ]});
        let keys = parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(keys["ed"].1, KeyFamily::Ed);
        assert!(parse(b"{\"keys\": []}").is_err());
        assert!(parse(b"[]").is_err());
    }
}
