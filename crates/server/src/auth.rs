//! Who a connection belongs to: the credential a client sends (the
//! `Authorization: Bearer` header or the `access_token` query parameter) becomes
//! a claimed user id here, at the HTTP edge; the hub then holds it to the chat
//! rules' user-id rules. Two modes:
//!
//! - `header`: the credential *is* the user id (development; anyone can be anyone).
//! - `jwt`: the credential is a signed JSON Web Token; the user id is one of its
//!   claims. Keys are an HS256 secret, one PEM public key, or a JWKS (a file or a
//!   URL, keys chosen by `kid`). The algorithms accepted follow from the key's
//!   type, so `alg: none` and an HS256 token "signed" with a public key never pass.
//!
//! With `header`, clients off loopback are refused unless the operator opts in
//! (`protected.rs`).
//!
//! A refusal says what was wrong (expired, bad signature, wrong audience, ...) in
//! an RFC 6750 `WWW-Authenticate` challenge, for the client's developer.

mod jwks;
pub mod protected;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use next_chat_signalr::server::{Identity, Refused};

pub use jwks::JwksSource;
use jwks::{Jwks, KeyFamily};

/// The longest token accepted, in bytes: far beyond any real one, short enough
/// that a refusal costs little.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// How the server authenticates, from the `auth` setting and its companions.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    /// The credential is the user id.
    Header,
    Jwt(JwtConfig),
}

/// The `jwt_*` settings.
#[derive(Clone)]
pub struct JwtConfig {
    pub keys: KeySource,
    /// `jwt_issuer`: the `iss` a token must carry, when set.
    pub issuer: Option<String>,
    /// `jwt_audience`: the `aud` a token must carry (or list), when set.
    pub audience: Option<String>,
    /// `jwt_leeway_secs`: clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// `jwt_user_claim`: the claim holding the user id.
    pub user_claim: String,
    /// `jwks_refresh_secs`: how often a JWKS URL is fetched again.
    pub jwks_refresh: Duration,
    /// `jwks_min_refetch_secs`: the least time between two fetches, however many
    /// tokens name an unknown `kid`.
    pub jwks_min_refetch: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

/// Where the verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// `NEXT_CHAT_JWT_SECRET` or `jwt_secret_file`: HS256/384/512.
    Secret(Vec<u8>),
    /// `jwt_public_key`: a PEM file (RSA, EC or Ed25519 public key).
    PublicKey(PathBuf),
    /// `jwks`: a JWKS file or URL.
    Jwks(JwksSource),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(***)"),
            KeySource::PublicKey(path) => write!(f, "PublicKey({})", path.display()),
            KeySource::Jwks(source) => write!(f, "Jwks({source})"),
        }
    }
}

/// Turns credentials into claimed user ids.
pub enum Authenticator {
    Header,
    Jwt(Box<JwtVerifier>),
}

impl Authenticator {
    /// Loads the keys (fetching a JWKS URL once); an error names the setting.
    pub async fn start(config: &AuthConfig) -> anyhow::Result<Authenticator> {
        Ok(match config {
            AuthConfig::Header => Authenticator::Header,
            AuthConfig::Jwt(jwt) => Authenticator::Jwt(Box::new(JwtVerifier::start(jwt).await?)),
        })
    }

    /// The user the credential names (still to be held to the user-id rules) and
    /// when the credential expires.
    /// A credential that passes takes its connection out of the per-address
    /// count of unauthenticated ones.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, Refused> {
        let identity = match self {
            Authenticator::Header => Identity::from(token.to_owned()),
            Authenticator::Jwt(verifier) => verifier.verify(token).await.map_err(invalid_token)?,
        };
        crate::serve::mark_authenticated();
        Ok(identity)
    }

    /// How to refuse a request without any credential: in `jwt` mode a bare
    /// `Bearer` challenge (RFC 6750: no error code when nothing was sent).
    pub fn unauthenticated(&self) -> Refused {
        match self {
            Authenticator::Header => Refused::from(
                "no identity: send an Authorization header or an access_token query parameter"
                    .to_owned(),
            ),
            Authenticator::Jwt(_) => Refused {
                reason: "no token: send Authorization: Bearer JWT or an access_token query \
                         parameter"
                    .to_owned(),
                challenge: Some("Bearer".to_owned()),
            },
        }
    }

    /// How to refuse a user id the chat rules do not accept.
    pub fn refuse_user(&self, reason: String) -> Refused {
        match self {
            Authenticator::Header => Refused::from(reason),
            Authenticator::Jwt(verifier) => {
                invalid_token(format!("the '{}' claim: {reason}", verifier.user_claim))
            }
        }
    }
}

/// An HS256 token for `user` that the server configured with `auth` accepts,
/// valid for `valid_for_secs`, with the configured issuer and audience.
pub fn mint_token(auth: &AuthConfig, user: &str, valid_for_secs: u64) -> anyhow::Result<String> {
    let AuthConfig::Jwt(JwtConfig {
        keys: KeySource::Secret(secret),
        issuer,
        audience,
        user_claim,
        ..
    }) = auth
    else {
        anyhow::bail!(
            "mint-token needs --auth jwt with an HS256 secret (NEXT_CHAT_JWT_SECRET or \
             --jwt-secret-file): with a public key or a JWKS, tokens come from the identity provider"
        );
    };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs();
    let mut claims = serde_json::Map::new();
    claims.insert(user_claim.clone(), user.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + valid_for_secs).into());
    if let Some(issuer) = issuer {
        claims.insert("iss".into(), issuer.as_str().into());
    }
    if let Some(audience) = audience {
        claims.insert("aud".into(), audience.as_str().into());
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    Ok(jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?)
}

/// A 401 with an RFC 6750 challenge naming the problem.
fn invalid_token(description: String) -> Refused {
    // A quoted-string may not hold `"` or `\` unescaped; the texts are ours, but
    // may quote a claim's value.
    let quoted: String =
        description.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
    Refused {
        challenge: Some(format!("Bearer error=\"invalid_token\", error_description=\"{quoted}\"")),
        reason: format!("invalid token: {description}"),
    }
}

/// Verifies JWTs against the configured keys and claims.
pub struct JwtVerifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: Duration,
    user_claim: String,
}

enum Keys {
    /// One key and the algorithms its type allows.
    Fixed(DecodingKey, KeyFamily),
    Jwks(Arc<Jwks>),
}

impl JwtVerifier {
    async fn start(config: &JwtConfig) -> anyhow::Result<JwtVerifier> {
        let keys = match &config.keys {
            KeySource::Secret(secret) => {
                Keys::Fixed(DecodingKey::from_secret(secret), KeyFamily::Hmac)
            }
            KeySource::PublicKey(path) => {
                let (key, family) = read_public_key(path)?;
                Keys::Fixed(key, family)
            }
            KeySource::Jwks(source) => Keys::Jwks(
                Jwks::start(source.clone(), config.jwks_refresh, config.jwks_min_refetch).await?,
            ),
        };
        Ok(JwtVerifier {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway,
            user_claim: config.user_claim.clone(),
        })
    }

    async fn verify(&self, token: &str) -> Result<Identity, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
        }
        let header = read_header(token)?;
        let (key, family) = match &self.keys {
            Keys::Fixed(key, family) => (key.clone(), *family),
            Keys::Jwks(jwks) => jwks.key(header.kid.as_deref()).await?,
        };
        let algorithm = family.accept(&header.alg)?;
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = self.leeway.as_secs();
        // A configured `iss` or `aud` must be present, not merely right when present.
        let mut required = vec!["exp"];
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        required.extend(self.audience.as_ref().map(|_| "aud"));
        validation.set_required_spec_claims(&required);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|error| self.describe(error.kind()))?
        .claims;
        let user = match claims.get(&self.user_claim) {
            Some(serde_json::Value::String(user)) => user.clone(),
            Some(_) => return Err(format!("the '{}' claim is not a string", self.user_claim)),
            None => {
                return Err(format!("the token has no '{}' claim (the user id)", self.user_claim));
            }
        };
        // The moment the token would be refused: validation compares whole
        // seconds and refuses once `exp + leeway` is in the past.
        let expires_at = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|exp| SystemTime::UNIX_EPOCH + Duration::from_secs(exp + 1) + self.leeway);
        Ok(Identity { user, expires_at })
    }

    /// What was wrong, for the token's developer.
    fn describe(&self, kind: &ErrorKind) -> String {
        match kind {
            ErrorKind::ExpiredSignature => "the token expired (exp)".to_owned(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_owned(),
            ErrorKind::InvalidSignature => "bad signature".to_owned(),
            ErrorKind::InvalidAudience => format!(
                "wrong audience (aud): this server is '{}'",
                self.audience.as_deref().unwrap_or_default()
            ),
            ErrorKind::InvalidIssuer => format!(
                "wrong issuer (iss): this server accepts '{}'",
                self.issuer.as_deref().unwrap_or_default()
            ),
            ErrorKind::MissingRequiredClaim(claim) => {
                format!("the token has no '{claim}' claim")
            }
            ErrorKind::InvalidAlgorithm => "the algorithm does not match the key".to_owned(),
            ErrorKind::InvalidClaimFormat(claim) => format!("the '{claim}' claim is malformed"),
            ErrorKind::Json(_) => "the claims are not a JSON object of valid claims".to_owned(),
            ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                "malformed token: not three base64url parts".to_owned()
            }
            other => format!("the token cannot be verified: {other:?}"),
        }
    }
}

/// The parts of a token's header that choose the key.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

/// Reads the header ourselves, so that an algorithm jsonwebtoken does not know
/// (`none` above all) gets a refusal naming it rather than a parse error.
fn read_header(token: &str) -> Result<Header, String> {
    let malformed = || "malformed token: not three base64url parts".to_owned();
    let encoded = token.split('.').next().ok_or_else(malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| malformed())?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|_| "malformed token: the header has no 'alg'".to_owned())?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err("alg 'none' is never accepted: tokens must be signed".to_owned());
    }
    Ok(header)
}

/// A PEM public key and the family of algorithms it verifies.
fn read_public_key(path: &Path) -> anyhow::Result<(DecodingKey, KeyFamily)> {
    use anyhow::Context;
    let pem = std::fs::read(path)
        .with_context(|| format!("jwt_public_key: cannot read {}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, KeyFamily::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, KeyFamily::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, KeyFamily::Ed));
    }
    anyhow::bail!(
        "jwt_public_key: {} holds no RSA, EC or Ed25519 public key in PEM form",
        path.display()
    )
}

impl KeyFamily {
    /// The token's algorithm, if this family of key verifies it.
    fn accept(self, alg: &str) -> Result<Algorithm, String> {
        let algorithm: Option<Algorithm> = alg.parse().ok();
        let allowed: &[Algorithm] = match self {
            KeyFamily::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            KeyFamily::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyFamily::Ec => &[Algorithm::ES256, Algorithm::ES384],
            KeyFamily::Ed => &[Algorithm::EdDSA],
        };
        match algorithm {
            Some(algorithm) if allowed.contains(&algorithm) => Ok(algorithm),
            _ => Err(format!(
                "algorithm '{alg}' is not accepted with this server's {} key (accepted: {})",
                self.name(),
                allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyFamily::Hmac => "HMAC secret",
            KeyFamily::Rsa => "RSA public",
            KeyFamily::Ec => "EC public",
            KeyFamily::Ed => "Ed25519 public",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode};
    use serde_json::json;

    fn now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
    }

    fn verifier(issuer: Option<&str>, audience: Option<&str>) -> JwtVerifier {
        JwtVerifier {
            keys: Keys::Fixed(DecodingKey::from_secret(b"s3cret"), KeyFamily::Hmac),
            issuer: issuer.map(str::to_owned),
            audience: audience.map(str::to_owned),
            leeway: Duration::from_secs(30),
            user_claim: "sub".to_owned(),
        }
    }

    fn hs256(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(&JwtHeader::default(), &claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[tokio::test]
    async fn a_valid_token_names_its_user_and_expiry() {
        let exp = now() + 600;
        let token = hs256(json!({"sub": "alice", "exp": exp}), b"s3cret");
        let identity = verifier(None, None).verify(&token).await.unwrap();
        assert_eq!(identity.user, "alice");
        assert_eq!(
            identity.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(exp + 1 + 30)),
            "valid until the leeway past exp runs out"
        );
    }

    #[tokio::test]
    async fn each_refusal_names_its_reason() {
        let v = verifier(Some("https://idp"), Some("next-chat"));
        let good =
            json!({"sub": "a", "exp": now() + 600, "iss": "https://idp", "aud": "next-chat"});
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[key] = value;
            claims
        };
        let cases = [
            (hs256(with("exp", json!(now() - 120)), b"s3cret"), "expired"),
            (hs256(with("nbf", json!(now() + 120)), b"s3cret"), "not valid yet"),
            (hs256(good.clone(), b"other"), "bad signature"),
            (hs256(with("iss", json!("https://evil")), b"s3cret"), "wrong issuer"),
            (hs256(with("aud", json!("other")), b"s3cret"), "wrong audience"),
            (
                hs256(
                    json!({"exp": now() + 600, "iss": "https://idp", "aud": "next-chat"}),
                    b"s3cret",
                ),
                "no 'sub' claim",
            ),
            (
                hs256(json!({"sub": "a", "iss": "https://idp", "aud": "next-chat"}), b"s3cret"),
                "no 'exp' claim",
            ),
            (
                hs256(json!({"sub": "a", "exp": now() + 600, "iss": "https://idp"}), b"s3cret"),
                "no 'aud' claim",
            ),
            (
                hs256(json!({"sub": "a", "exp": now() + 600, "aud": "next-chat"}), b"s3cret"),
                "no 'iss' claim",
            ),
            ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.".to_owned(), "'none' is never accepted"),
            ("garbage".to_owned(), "malformed"),
        ];
        for (token, expected) in cases {
            let error = v.verify(&token).await.unwrap_err();
            assert!(error.contains(expected), "{expected}: got {error}");
        }
        assert!(v.verify(&hs256(good, b"s3cret")).await.is_ok());
    }

    #[test]
    fn challenges_quote_safely() {
        let refused = invalid_token("the 'sub' claim: \"x\\y\" bad".to_owned());
        assert_eq!(
            refused.challenge.as_deref(),
            Some("Bearer error=\"invalid_token\", error_description=\"the 'sub' claim: xy bad\"")
        );
    }

    #[test]
    fn key_families_accept_only_their_algorithms() {
        assert!(KeyFamily::Rsa.accept("HS256").is_err());
        assert!(KeyFamily::Hmac.accept("RS256").is_err());
        assert!(KeyFamily::Ec.accept("none").is_err());
        assert_eq!(KeyFamily::Ed.accept("EdDSA"), Ok(Algorithm::EdDSA));
    }
}
