//! The `auth` section: who the callers are (static bearer tokens, JWT subjects, TLS client
//! certificate subjects) and what each may do, on every instance or per instance. Without the
//! section every caller is anonymous and may do everything (the zero-config local cache).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::units::duration;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// What callers without credentials may do (nothing unless listed).
    #[serde(default)]
    pub anonymous: Grant,
    #[serde(default)]
    pub identities: Vec<IdentityConfig>,
    /// Accept JWT bearer tokens signed by these keys.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// One identity: a name (for logs and operation ownership), exactly one credential, permissions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    pub name: String,
    /// A file holding the bearer token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The SHA-256 of the bearer token, hex, so that the configuration holds no secret.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// A JWT's `sub` claim (the token verified against `auth.jwt`).
    #[serde(default)]
    pub jwt_subject: Option<String>,
    /// A TLS client certificate's subject as RFC 4514 prints it, e.g. `CN=ci,O=Example`.
    #[serde(default)]
    pub certificate_subject: Option<String>,
    pub permissions: Grant,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must name.
    pub audience: String,
    /// Public keys, PEM (RSA, EC P-256 or Ed25519).
    #[serde(default)]
    pub key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`), keys chosen by the token's `kid`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// CAS and action cache reads, FindMissing, GetTree, Capabilities, asset fetch.
    Read,
    /// CAS uploads and asset push.
    Write,
    /// UpdateActionResult.
    WriteAc,
    /// Execute, WaitExecution and the caller's own operations.
    Execute,
    /// The Bots service.
    Bot,
    /// Everyone's operations and the admin API.
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 6] =
        [Permission::Read, Permission::Write, Permission::WriteAc, Permission::Execute, Permission::Bot, Permission::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::WriteAc => "write_ac",
            Permission::Execute => "execute",
            Permission::Bot => "bot",
            Permission::Admin => "admin",
        }
    }
}

/// Permissions as the configuration gives them: a list for every instance, or a map from instance
/// name to a list (`"*"` for the instances not named).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant(pub BTreeMap<String, Vec<Permission>>);

/// The key of a grant that applies to every instance not named.
pub const EVERY_INSTANCE: &str = "*";

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Grant, D::Error> {
        struct GrantVisitor;
        impl<'de> Visitor<'de> for GrantVisitor {
            type Value = Grant;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of permissions (read, write, write_ac, execute, bot, admin) or a map from instance name to such a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Grant, A::Error> {
                let list = Vec::<Permission>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Grant(BTreeMap::from([(EVERY_INSTANCE.to_string(), list)])))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Grant, A::Error> {
                Ok(Grant(BTreeMap::deserialize(de::value::MapAccessDeserializer::new(map))?))
            }
        }
        deserializer.deserialize_any(GrantVisitor)
    }
}
