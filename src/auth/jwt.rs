//! JWT bearer tokens: signed by one of the configured public keys (RSA, EC or Ed25519; never a
//! shared secret, never `none`), from the configured issuer, for the configured audience, unexpired.
//! The identity is the token's `sub`.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use tonic::Status;

use super::AuthSetupError;
use crate::config::JwtConfig;

/// The algorithms a token may name: public-key ones only, so that a public key can never be
/// misused as an HMAC secret.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub struct Verifier {
    /// Keys with their `kid` (JWKS keys have one; PEM keys do not).
    keys: Vec<(Option<String>, DecodingKey)>,
    issuer: String,
    audience: String,
    leeway: u64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Verifier {
    pub fn from_config(config: &JwtConfig) -> Result<Verifier, AuthSetupError> {
        let mut keys = Vec::new();
        for (i, path) in config.key_files.iter().enumerate() {
            let key = format!("auth.jwt.key_files[{i}]");
            let pem = std::fs::read(path).map_err(|source| AuthSetupError::Read { key: key.clone(), path: path.display().to_string(), source })?;
            let decoded = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|e| AuthSetupError::Invalid { key, message: format!("{} is not an RSA, EC or Ed25519 public key in PEM: {e}", path.display()) })?;
            keys.push((None, decoded));
        }
        if let Some(path) = &config.jwks_file {
            let key = "auth.jwt.jwks_file".to_string();
            let text = std::fs::read(path).map_err(|source| AuthSetupError::Read { key: key.clone(), path: path.display().to_string(), source })?;
            let set: JwkSet = serde_json::from_slice(&text)
                .map_err(|e| AuthSetupError::Invalid { key: key.clone(), message: format!("{} is not a JWKS: {e}", path.display()) })?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let decoded = DecodingKey::from_jwk(jwk).map_err(|e| AuthSetupError::Invalid { key: format!("{key} keys[{i}]"), message: e.to_string() })?;
                if decoded.family() == AlgorithmFamily::Hmac {
                    return Err(AuthSetupError::Invalid { key: format!("{key} keys[{i}]"), message: "shared-secret (oct) keys are not accepted".into() });
                }
                keys.push((jwk.common.key_id.clone(), decoded));
            }
        }
        Ok(Verifier { keys, issuer: config.issuer.clone(), audience: config.audience.clone(), leeway: config.leeway.as_secs() })
    }

    /// The subject of a valid token.
    pub fn subject(&self, token: &str) -> Result<String, Status> {
        let invalid = |why: String| Status::unauthenticated(format!("the JWT is not valid: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!("algorithm {:?} is not accepted (RSA, ECDSA or EdDSA only)", header.alg)));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let family = header.alg.family();
        let candidates = self.keys.iter().filter(|(kid, key)| {
            key.family() == family && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
        });
        let mut last = "no configured key fits its algorithm or key id".to_string();
        for (_, key) in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims.sub),
                Err(e) => {
                    let signature = matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature);
                    last = e.to_string();
                    if !signature {
                        break;
                    }
                }
            }
        }
        Err(invalid(last))
    }
}
