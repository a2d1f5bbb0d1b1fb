//! API keys: secrets, their hashes, and scopes.
//!
//! A key is `sessiond_` followed by 43 base64url characters (32 random bytes from the
//! operating system), so leaked keys are easy to recognise and scan for. Only its SHA-256 is
//! stored (the secret is high-entropy, so a slow password hash adds nothing); the secret is
//! shown once, at creation. Scopes are cumulative: `write` includes `read`, `admin` includes
//! both.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::Invalid;

pub const KEY_PREFIX: &str = "sessiond_";

/// What a key may do.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// GETs and event streams (and summaries, which read).
    Read,
    /// Read, plus creating, changing and deleting sessions and messages.
    Write,
    /// Write, plus managing keys and the debug endpoints.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Result<Scope, Invalid> {
        match raw.trim() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(Invalid::new(format!(
                "unknown scope `{}`; scopes are read, write and admin",
                super::clip(other)
            ))),
        }
    }

    /// The highest of a comma-separated list (`read,write` is `write`).
    pub fn parse_list(raw: &str) -> Result<Scope, Invalid> {
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .max()
            .ok_or_else(|| Invalid::new("a key needs at least one scope: read, write or admin"))
    }

    /// Whether a key with this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    /// Every scope this one includes, lowest first.
    pub fn included(self) -> Vec<Scope> {
        [Scope::Read, Scope::Write, Scope::Admin]
            .into_iter()
            .filter(|s| self.allows(*s))
            .collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's secret: shown once, never stored, never logged.
pub struct Secret(String);

impl Secret {
    /// A new random secret from the operating system's generator.
    pub fn generate() -> Result<Secret, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Secret(format!(
            "{KEY_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        )))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first characters, enough to tell keys apart in a list.
    pub fn hint(&self) -> String {
        hint(&self.0)
    }

    pub fn hash(&self) -> String {
        hash(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}…)", self.hint())
    }
}

/// The first 12 characters of a key (`sessiond_` and 3 more).
pub fn hint(secret: &str) -> String {
    secret.chars().take(KEY_PREFIX.len() + 3).collect()
}

/// The stored form of a key: hex SHA-256.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A stored key (without its secret).
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ApiKey {
    /// `key_…`.
    pub id: String,
    pub name: String,
    /// Its scope and every scope that one includes.
    #[schema(value_type = Vec<Scope>)]
    #[serde(serialize_with = "scopes")]
    pub scope: Scope,
    /// The first characters of the secret, to recognise it.
    pub hint: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn scopes<S: serde::Serializer>(scope: &Scope, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(scope.included())
}

impl ApiKey {
    /// Why the key cannot be used at `now`, if it cannot.
    pub fn unusable(&self, now: i64) -> Option<String> {
        if let Some(at) = self.revoked_at {
            return Some(format!("API key {} was revoked at {at}", self.id));
        }
        match self.expires_at {
            Some(at) if at <= now => Some(format!("API key {} expired at {at}", self.id)),
            _ => None,
        }
    }
}

/// A key to create.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub scope: Scope,
    pub expires_at: Option<i64>,
}

/// Body of `POST /v1/admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label for people (default "unnamed").
    #[serde(default, deserialize_with = "super::non_null")]
    #[schema(value_type = String, max_length = 200)]
    pub name: Option<String>,
    /// One or more of `read`, `write`, `admin` (the highest counts: scopes are cumulative).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Lifetime in seconds from now; `null` or absent: no expiry (as `expires_at: null` says).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 3155760000_u64)]
    pub expires_in: Option<u64>,
}

/// The longest lifetime a key can be given: 100 years, in seconds.
pub const MAX_EXPIRES_IN: u64 = 3_155_760_000;

/// A whole number, also written as `5.0` (JSON Schema's `integer` includes it), or `null`.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("expected a whole number of seconds, not {number}"))
        })
}

impl CreateKey {
    pub fn into_new(self, now: i64) -> Result<NewKey, Invalid> {
        let name = self.name.unwrap_or_else(|| "unnamed".to_owned());
        if name.chars().count() > 200 {
            return Err(Invalid::new("name is longer than 200 characters"));
        }
        let scope =
            self.scopes.into_iter().max().ok_or_else(|| {
                Invalid::new("scopes must name at least one of read, write, admin")
            })?;
        let expires_at = match self.expires_in {
            None => None,
            Some(0) => return Err(Invalid::new("expires_in must be at least 1 second")),
            Some(seconds) if seconds > MAX_EXPIRES_IN => {
                return Err(Invalid::new(format!(
                    "expires_in is at most {MAX_EXPIRES_IN} seconds (100 years)"
                )));
            }
            Some(seconds) => Some(
                i64::try_from(seconds)
                    .ok()
                    .and_then(|s| s.checked_mul(1000))
                    .and_then(|ms| now.checked_add(ms))
                    .ok_or_else(|| Invalid::new("expires_in is too large"))?,
            ),
        };
        Ok(NewKey {
            name,
            scope,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_hashed() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with(KEY_PREFIX));
        assert_eq!(a.expose().len(), KEY_PREFIX.len() + 43);
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.hash(), hash(a.expose()));
        assert!(
            !format!("{a:?}").contains(&a.expose()[15..]),
            "Debug never shows the secret"
        );
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scopes_are_cumulative() {
        assert_eq!(Scope::parse_list("read,write").unwrap(), Scope::Write);
        assert_eq!(Scope::parse_list("admin").unwrap(), Scope::Admin);
        assert!(Scope::parse_list("").is_err());
        assert!(Scope::parse_list("read,root").is_err());
        assert!(Scope::Admin.allows(Scope::Write) && Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write) && !Scope::Write.allows(Scope::Admin));
        assert_eq!(Scope::Write.included(), vec![Scope::Read, Scope::Write]);
    }
}
