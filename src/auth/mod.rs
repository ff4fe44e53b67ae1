//! Who is calling and what they may do. `Authenticator` turns a call's credentials (a bearer token,
//! static or JWT, or a TLS client certificate) into a `Caller` with per-instance permissions;
//! `layer` checks every call against the permission its method needs before any service runs, and
//! leaves an `Access` in the request for the instance-level check the services make when they look
//! their instance up (`Instances`), and for operation ownership.

mod jwt;
pub mod layer;

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tonic::Status;

use crate::config::{AuthConfig, Config, Grant, Permission, EVERY_INSTANCE};
use crate::quote::quote;

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Permissions(u8);

impl Permissions {
    pub const ALL: Permissions = Permissions(0x3f);

    fn bit(p: Permission) -> u8 {
        1 << (p as u8)
    }
    pub fn of(list: &[Permission]) -> Permissions {
        Permissions(list.iter().fold(0, |acc, p| acc | Permissions::bit(*p)))
    }
    pub fn has(self, p: Permission) -> bool {
        self.0 & Permissions::bit(p) != 0
    }
    fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }
    pub fn names(self) -> Vec<&'static str> {
        Permission::ALL.iter().filter(|p| self.has(**p)).map(|p| p.name()).collect()
    }
}

/// What one identity may do, instance by instance.
#[derive(Debug, Default)]
pub struct Grants {
    per_instance: HashMap<String, Permissions>,
    /// On the instances not named.
    otherwise: Permissions,
}

impl Grants {
    pub fn everything() -> Grants {
        Grants { per_instance: HashMap::new(), otherwise: Permissions::ALL }
    }

    /// What the bots `strata serve` runs in its process may do: serve as bots, and read inputs and
    /// write outputs on every instance.
    pub fn local_bots() -> Grants {
        Grants { per_instance: HashMap::new(), otherwise: Permissions::of(&[Permission::Bot, Permission::Read, Permission::Write]) }
    }

    fn from_config(grant: &Grant) -> Grants {
        let mut grants = Grants::default();
        for (instance, list) in &grant.0 {
            if instance == EVERY_INSTANCE {
                grants.otherwise = Permissions::of(list);
            } else {
                grants.per_instance.insert(instance.clone(), Permissions::of(list));
            }
        }
        grants
    }

    pub fn on(&self, instance: &str) -> Permissions {
        self.per_instance.get(instance).copied().unwrap_or(self.otherwise)
    }

    /// Everything it may do on some instance.
    pub fn anywhere(&self) -> Permissions {
        self.per_instance.values().fold(self.otherwise, |acc, p| acc.union(*p))
    }
}

/// The caller of one RPC.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The identity's name; None for a caller without credentials.
    pub name: Option<Arc<str>>,
    pub grants: Arc<Grants>,
}

impl Caller {
    /// How the caller is named in messages and as the owner of operations.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("anonymous")
    }

    pub fn may(&self, instance: &str, permission: Permission) -> bool {
        self.grants.on(instance).has(permission)
    }

    /// UNAUTHENTICATED for a caller without credentials (they may have the right ones),
    /// PERMISSION_DENIED for an identity that lacks the permission. `call` names what was asked.
    pub fn denied(&self, call: &str, permission: Permission) -> Status {
        match &self.name {
            None => Status::unauthenticated(format!(
                "{call} needs the {} permission; send credentials (a bearer token or a client certificate) of an identity that has it",
                permission.name()
            )),
            Some(name) => Status::permission_denied(format!("identity {} lacks the {} permission for {call}", quote(name), permission.name())),
        }
    }
}

/// What the auth layer leaves in each request: the caller, and the permission the method needs.
#[derive(Clone, Debug)]
pub struct Access {
    pub caller: Caller,
    pub needs: Permission,
}

impl Access {
    /// The caller's access, checked against `instance`; a request that did not pass the auth layer
    /// (it cannot happen when serving) is refused rather than let through.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Access, Status> {
        request.extensions().get::<Access>().ok_or_else(|| Status::internal("the call was not authorized (no auth layer)"))
    }

    pub fn check(&self, instance: &str) -> Result<(), Status> {
        if self.caller.may(instance, self.needs) {
            Ok(())
        } else {
            Err(self.caller.denied(&format!("this call on instance {}", quote(instance)), self.needs))
        }
    }
}

/// Why a configured identity cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{key}: cannot read {path}: {source}")]
    Read { key: String, path: String, source: std::io::Error },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Turns credentials into callers.
pub struct Authenticator {
    /// Identities by the SHA-256 of their static bearer token.
    tokens: HashMap<[u8; 32], Caller>,
    jwt: Option<jwt::Verifier>,
    jwt_subjects: HashMap<String, Caller>,
    certificate_subjects: HashMap<String, Caller>,
    anonymous: Caller,
}

impl Authenticator {
    /// Every caller anonymous and allowed everything: a server without an `auth` section.
    pub fn open() -> Authenticator {
        let anonymous = Caller { name: None, grants: Arc::new(Grants::everything()) };
        Authenticator {
            tokens: HashMap::new(),
            jwt: None,
            jwt_subjects: HashMap::new(),
            certificate_subjects: HashMap::new(),
            anonymous,
        }
    }

    pub fn from_config(config: &Config) -> Result<Authenticator, AuthSetupError> {
        let Some(auth) = &config.auth else { return Ok(Authenticator::open()) };
        Authenticator::build(auth)
    }

    fn build(auth: &AuthConfig) -> Result<Authenticator, AuthSetupError> {
        let mut this = Authenticator::open();
        this.anonymous = Caller { name: None, grants: Arc::new(Grants::from_config(&auth.anonymous)) };
        this.jwt = auth.jwt.as_ref().map(jwt::Verifier::from_config).transpose()?;
        for (i, id) in auth.identities.iter().enumerate() {
            let key = format!("auth.identities[{i}]");
            let caller = Caller { name: Some(Arc::from(id.name.as_str())), grants: Arc::new(Grants::from_config(&id.permissions)) };
            if let Some(path) = &id.token_file {
                let read = |source| AuthSetupError::Read { key: format!("{key}.token_file"), path: path.display().to_string(), source };
                let text = std::fs::read_to_string(path).map_err(read)?;
                let token = text.trim();
                if token.len() < 16 {
                    let message = format!("the token in {} is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)", path.display(), token.len());
                    return Err(AuthSetupError::Invalid { key: format!("{key}.token_file"), message });
                }
                this.tokens.insert(token_hash(token), caller);
            } else if let Some(hex_hash) = &id.token_sha256 {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(hex_hash, &mut hash)
                    .map_err(|e| AuthSetupError::Invalid { key: format!("{key}.token_sha256"), message: e.to_string() })?;
                this.tokens.insert(hash, caller);
            } else if let Some(subject) = &id.jwt_subject {
                this.jwt_subjects.insert(subject.clone(), caller);
            } else if let Some(subject) = &id.certificate_subject {
                this.certificate_subjects.insert(normalize_subject(subject), caller);
            }
        }
        Ok(this)
    }

    /// A static token with `grants`, for the bots `strata serve` runs in its own process.
    pub fn add_token(&mut self, name: &str, token: &str, grants: Grants) {
        self.tokens.insert(token_hash(token), Caller { name: Some(Arc::from(name)), grants: Arc::new(grants) });
    }

    /// What callers without credentials may do.
    pub fn anonymous(&self) -> Permissions {
        self.anonymous.grants.anywhere()
    }

    /// The caller behind a call's `authorization` header and client certificate. Credentials that
    /// are sent but not valid are UNAUTHENTICATED, never silently anonymous.
    pub fn authenticate(&self, authorization: Option<&[u8]>, certificate: Option<&[u8]>) -> Result<Caller, Status> {
        if let Some(value) = authorization {
            let token = bearer(value)?;
            if let Some(caller) = self.tokens.get(&token_hash(token)) {
                return Ok(caller.clone());
            }
            if let Some(verifier) = self.jwt.as_ref().filter(|_| token.matches('.').count() == 2) {
                let subject = verifier.subject(token)?;
                return self.jwt_subjects.get(&subject).cloned().ok_or_else(|| {
                    Status::permission_denied(format!("the token's subject {} is not an identity of this server", quote(&subject)))
                });
            }
            return Err(Status::unauthenticated("the bearer token is not valid here"));
        }
        if let Some(der) = certificate {
            let subject = certificate_subject(der)?;
            return self.certificate_subjects.get(&subject).cloned().ok_or_else(|| {
                Status::permission_denied(format!("the client certificate's subject {} is not an identity of this server", quote(&subject)))
            });
        }
        Ok(self.anonymous.clone())
    }
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A fresh random token (for the in-process bots).
pub fn random_token() -> Result<String, AuthSetupError> {
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| AuthSetupError::Invalid { key: "auth".into(), message: "no random numbers for the local bots' token".into() })?;
    Ok(hex::encode(bytes))
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(value: &[u8]) -> Result<&str, Status> {
    let malformed = || Status::unauthenticated("the authorization header is not `Bearer <token>`");
    let text = std::str::from_utf8(value).map_err(|_| malformed())?;
    let (scheme, token) = text.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(malformed());
    }
    Ok(token.trim())
}

/// RFC 4514 subjects compared without the spaces some tools print after commas.
fn normalize_subject(subject: &str) -> String {
    subject.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

fn certificate_subject(der: &[u8]) -> Result<String, Status> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Status::unauthenticated(format!("the client certificate cannot be parsed: {e}")))?;
    Ok(normalize_subject(&cert.subject().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_per_instance_override_the_default() {
        let mut map = std::collections::BTreeMap::new();
        map.insert("*".to_string(), vec![Permission::Read]);
        map.insert("main".to_string(), vec![Permission::Read, Permission::WriteAc]);
        let grants = Grants::from_config(&Grant(map));
        assert!(grants.on("other").has(Permission::Read) && !grants.on("other").has(Permission::WriteAc));
        assert!(grants.on("main").has(Permission::WriteAc));
        assert_eq!(grants.anywhere().names(), vec!["read", "write_ac"]);
    }

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc").ok(), Some("abc"));
        assert_eq!(bearer(b"bearer  abc ").ok(), Some("abc"));
        for bad in [&b"Basic abc"[..], b"Bearer", b"Bearer ", b"\xff\xfe"] {
            assert_eq!(bearer(bad).map_err(|s| s.code()), Err(tonic::Code::Unauthenticated));
        }
    }

    #[test]
    fn unknown_tokens_are_unauthenticated_and_no_header_is_anonymous() {
        let mut auth = Authenticator::open();
        auth.anonymous = Caller { name: None, grants: Arc::new(Grants::default()) };
        auth.add_token("ci", "0123456789abcdef", Grants::everything());
        let ci = auth.authenticate(Some(b"Bearer 0123456789abcdef"), None).map_err(|s| s.code());
        assert_eq!(ci.map(|c| c.label().to_string()), Ok("ci".to_string()));
        let wrong = auth.authenticate(Some(b"Bearer 0123456789abcdeX"), None).map_err(|s| s.code());
        assert_eq!(wrong.err(), Some(tonic::Code::Unauthenticated));
        let anonymous = auth.authenticate(None, None).map_err(|s| s.code());
        assert_eq!(anonymous.map(|c| c.grants.anywhere()), Ok(Permissions::default()));
    }
}
