//! Authentication and TLS: which settings go together, and the JWT key.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, Settings, Values, bad};
use crate::auth::{AuthConfig, JwksSource, JwtConfig, KeySource};

/// The certificate chain and private key the server serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The least HS256 secret: 256 bits, as RFC 7518 requires of an HS256 key.
const MIN_SECRET_BYTES: usize = 32;

/// `s`: the settings as given, to tell a setting left at its default from one
/// set; `v`: the same with the defaults applied.
pub(super) fn auth_config(s: &Settings, v: &Values) -> Result<AuthConfig, ConfigError> {
    let jwt = match v.auth.as_str() {
        "header" => false,
        "jwt" => true,
        other => return Err(bad("auth", format!("'{other}' is not header or jwt"))),
    };
    if !jwt {
        let jwt_only = [
            ("jwt_secret_file", v.jwt_secret_file.is_some()),
            ("jwt_public_key", v.jwt_public_key.is_some()),
            ("jwks", v.jwks.is_some()),
            ("jwt_issuer", v.jwt_issuer.is_some()),
            ("jwt_audience", v.jwt_audience.is_some()),
            ("jwt_user_claim", s.jwt_user_claim.is_some()),
        ];
        if let Some((key, _)) = jwt_only.iter().find(|(_, set)| *set) {
            return Err(bad(key, "is set but auth is header: add --auth jwt"));
        }
        return Ok(AuthConfig::Header);
    }
    if v.jwt_user_claim.is_empty() {
        return Err(bad("jwt_user_claim", "must name a claim"));
    }
    let keys = key_source(s, v)?;
    Ok(AuthConfig::Jwt(JwtConfig {
        audience: jwt_audience(v, &keys)?,
        keys,
        issuer: v.jwt_issuer.clone().filter(|issuer| !issuer.is_empty()),
        leeway: Duration::from_secs(v.jwt_leeway_secs),
        user_claim: v.jwt_user_claim.clone(),
        jwks_refresh: Duration::from_secs(v.jwks_refresh_secs),
        jwks_min_refetch: Duration::from_secs(v.jwks_min_refetch_secs),
    }))
}

/// The `aud` tokens must carry. An identity provider (a JWKS or its public
/// key) signs tokens for every application it serves, so there the audience is
/// what tells this server's tokens apart: it must be given, or waived with
/// `any`. An HS256 secret is this server's own, and the audience optional.
fn jwt_audience(v: &Values, keys: &KeySource) -> Result<Option<String>, ConfigError> {
    match v.jwt_audience.as_deref().map(str::trim) {
        Some("any") => Ok(None),
        Some(audience) if !audience.is_empty() => Ok(Some(audience.to_owned())),
        _ if matches!(keys, KeySource::Secret(_)) => Ok(None),
        _ => Err(bad(
            "jwt_audience",
            "is required with jwt_public_key or jwks: an identity provider signs tokens for \
             other applications too; set it to the aud of this server's tokens, or to `any` \
             to accept every audience",
        )),
    }
}

/// The one kind of key tokens are checked with: the secret (from
/// NEXT_CHAT_JWT_SECRET or its file), a public key or a JWKS.
fn key_source(s: &Settings, v: &Values) -> Result<KeySource, ConfigError> {
    let mut sources = Vec::new();
    if let Some(secret) = secret(s, v)? {
        sources.push(("the secret", KeySource::Secret(secret)));
    }
    if let Some(path) = &v.jwt_public_key {
        sources.push(("jwt_public_key", KeySource::PublicKey(path.clone())));
    }
    if let Some(jwks) = &v.jwks {
        if jwks.is_empty() {
            return Err(bad("jwks", "must be a file or an https:// URL"));
        }
        sources.push(("jwks", KeySource::Jwks(JwksSource::parse(jwks))));
    }
    match sources.len() {
        0 => Err(bad(
            "auth",
            "jwt needs keys: NEXT_CHAT_JWT_SECRET, jwt_secret_file, jwt_public_key or jwks",
        )),
        1 => Ok(sources.remove(0).1),
        _ => {
            let names: Vec<_> = sources.iter().map(|(name, _)| *name).collect();
            Err(bad("auth", format!("give one kind of key, not {}", names.join(" and "))))
        }
    }
}

/// The HS256 secret, if given (one way only, and long enough).
fn secret(s: &Settings, v: &Values) -> Result<Option<Vec<u8>>, ConfigError> {
    let (key, secret) = match (&s.jwt_secret, &v.jwt_secret_file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "jwt_secret_file",
                "NEXT_CHAT_JWT_SECRET is set too: give the secret one way",
            ));
        }
        (Some(secret), None) => ("NEXT_CHAT_JWT_SECRET", secret.as_bytes().to_vec()),
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|e| {
                bad("jwt_secret_file", format!("cannot read {}: {e}", path.display()))
            })?;
            // A file written by `echo` ends in a newline that is not part of the secret.
            let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
            ("jwt_secret_file", bytes[..end].to_vec())
        }
        (None, None) => return Ok(None),
    };
    if secret.len() < MIN_SECRET_BYTES {
        return Err(bad(
            key,
            format!("the secret must be at least {MIN_SECRET_BYTES} bytes (256 bits)"),
        ));
    }
    Ok(Some(secret))
}

pub(super) fn tls_files(v: &Values) -> Result<Option<TlsFiles>, ConfigError> {
    match (&v.tls_cert, &v.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone() })),
        (Some(_), None) => Err(bad("tls_key", "is needed with tls_cert")),
        (None, Some(_)) => Err(bad("tls_cert", "is needed with tls_key")),
        (None, None) => Ok(None),
    }
}
