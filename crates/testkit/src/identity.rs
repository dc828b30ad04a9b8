//! Credentials for the tests of `--auth jwt` and TLS: tokens minted with the same
//! crate the server verifies them with, and a certificate authority generated
//! per test, whose server certificate names `localhost` and `127.0.0.1`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A 32-byte HS256 secret, the least the server accepts.
pub const TEST_SECRET: &str = "next-chat-test-secret-32-bytes!!";

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is past 1970").as_secs()
}

/// An HS256 token for `sub` that expires `valid_for_secs` from now.
pub fn hs256_token(secret: &str, sub: &str, valid_for_secs: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "exp": now_secs() + valid_for_secs });
    sign_hs256(secret.as_bytes(), &claims)
}

/// Any claims, HS256-signed with `secret`.
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
        .expect("HS256 signs")
}

/// Writes `secret` to `dir/jwt-secret` for `--jwt-secret-file`.
pub fn secret_file(dir: &Path, secret: &str) -> PathBuf {
    let path = dir.join("jwt-secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret file");
    path
}

/// An ES256 key pair: tokens signed with it, its public half as PEM or as a JWK.
pub struct SigningKey {
    key: KeyPair,
    pub kid: String,
}

impl SigningKey {
    pub fn generate(kid: &str) -> SigningKey {
        SigningKey { key: KeyPair::generate().expect("a P-256 key"), kid: kid.to_owned() }
    }

    /// The public key in PEM, for `--jwt-public-key`.
    pub fn public_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// An ES256 token with these claims, its header naming this key's `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let key =
            EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).expect("a PKCS#8 EC key");
        jsonwebtoken::encode(&header, claims, &key).expect("ES256 signs")
    }

    /// The public key as a JWK (`kty: EC`, P-256).
    pub fn jwk(&self) -> serde_json::Value {
        use base64::Engine;
        // Uncompressed point: 0x04, then X and Y, 32 bytes each.
        let point = self.key.public_key_raw();
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": encode(&point[1..33]), "y": encode(&point[33..65]),
        })
    }
}

/// A certificate authority of one test, and the server certificate it issued.
pub struct TestCa {
    /// The CA certificate, PEM: what clients are told to trust.
    pub ca_file: PathBuf,
    /// The server's certificate chain and key, PEM, for `--tls-cert`/`--tls-key`.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestCa {
    /// A new CA, its certificate and a server certificate written into `dir`
    /// (files named with `name`, so one directory can hold several CAs).
    pub fn create(dir: &Path, name: &str) -> TestCa {
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, format!("Next Chat test CA {name}"));
        let ca_cert = ca_params.self_signed(&ca_key).expect("the CA signs itself");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("a server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        let server_cert = server_params.signed_by(&server_key, &issuer).expect("the CA signs");
        let write = |file: &str, text: String| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        TestCa {
            ca_file: write("ca.pem", ca_cert.pem()),
            cert_file: write("cert.pem", server_cert.pem()),
            key_file: write("key.pem", server_key.serialize_pem()),
        }
    }

    /// `--tls-cert FILE --tls-key FILE`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert_file.display().to_string(),
            "--tls-key".to_owned(),
            self.key_file.display().to_string(),
        ]
    }
}
