//! Access control: the principals (an MQTT user, a Redis `AUTH user pass`, an HTTP token) and
//! which topics each may publish to and subscribe to, as Redis glob patterns over the key
//! (any db). One model for every protocol, so no protocol is a way around another's rules.
//!
//! This module holds the principals and answers "may this principal ...?"; `client.rs` asks it
//! before every operation. It never reads or writes data.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::error::EngineError;
use super::glob::glob_match;

/// The principal a connection has before it authenticates (Redis's `default` user).
pub const DEFAULT_PRINCIPAL: &str = "default";

/// A principal as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrincipalConfig {
    /// Name (MQTT username, Redis user, HTTP token name).
    pub name: String,
    /// Secret (password or token); `None`: none needed (Redis's `nopass`).
    pub secret: Option<String>,
    /// Glob patterns of the keys it may publish to (append, delete, trim, drop).
    pub publish: Vec<String>,
    /// Glob patterns of the keys it may subscribe to (read, wait, consume in a group).
    pub subscribe: Vec<String>,
}

/// The principals. Default: only `default`, without a secret, allowed everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// Every principal; a `default` entry sets what unauthenticated connections may do
    /// (without one, they may do nothing).
    pub principals: Vec<PrincipalConfig>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            principals: vec![PrincipalConfig {
                name: DEFAULT_PRINCIPAL.into(),
                secret: None,
                publish: vec!["*".into()],
                subscribe: vec!["*".into()],
            }],
        }
    }
}

/// An authenticated principal: what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    name: Bytes,
    publish: Vec<Bytes>,
    subscribe: Vec<Bytes>,
}

impl Principal {
    /// Its name.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// Whether it may publish to (change) the stream `key`. Nobody may write `$SYS` or
    /// `$SYS/...`: the MQTT broker's own statistics live there (node-local, never in the log),
    /// and no protocol is a way to forge them.
    pub fn may_publish(&self, key: &[u8]) -> bool {
        !is_reserved(key) && self.publish.iter().any(|p| glob_match(p, key))
    }

    /// Whether it may subscribe to (read) the stream `key`.
    pub fn may_subscribe(&self, key: &[u8]) -> bool {
        self.subscribe.iter().any(|p| glob_match(p, key))
    }

    /// `Ok` if it may publish to `key`, else `NoPermission`.
    pub fn check_publish(&self, key: &[u8]) -> Result<(), EngineError> {
        if self.may_publish(key) {
            Ok(())
        } else {
            Err(EngineError::NoPermission {
                key: Bytes::copy_from_slice(key),
                publish: true,
            })
        }
    }

    /// `Ok` if it may subscribe to `key`, else `NoPermission`.
    pub fn check_subscribe(&self, key: &[u8]) -> Result<(), EngineError> {
        if self.may_subscribe(key) {
            Ok(())
        } else {
            Err(EngineError::NoPermission {
                key: Bytes::copy_from_slice(key),
                publish: false,
            })
        }
    }
}

/// The principals, by name, with their secrets.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    principals: HashMap<Bytes, (Option<Bytes>, Arc<Principal>)>,
}

impl Acl {
    /// Builds the table; a later entry with the same name replaces an earlier one.
    pub fn new(config: &AccessConfig) -> Self {
        let bytes = |v: &[String]| v.iter().map(|p| Bytes::from(p.clone())).collect();
        Acl {
            principals: config
                .principals
                .iter()
                .map(|p| {
                    let name = Bytes::from(p.name.clone());
                    let principal = Principal {
                        name: name.clone(),
                        publish: bytes(&p.publish),
                        subscribe: bytes(&p.subscribe),
                    };
                    let secret = p.secret.clone().map(Bytes::from);
                    (name, (secret, Arc::new(principal)))
                })
                .collect(),
        }
    }

    /// The principal `name` if `secret` is its secret (any secret for one without: Redis's
    /// `nopass`); `BadCredentials` otherwise, the same for an unknown name and a wrong secret.
    pub fn authenticate(&self, name: &[u8], secret: &[u8]) -> Result<Arc<Principal>, EngineError> {
        match self.principals.get(name) {
            Some((None, p)) => Ok(p.clone()),
            Some((Some(want), p)) if constant_time_eq(want, secret) => Ok(p.clone()),
            _ => Err(EngineError::BadCredentials),
        }
    }

    /// Whether a principal `name` exists (the `default` one always does when none is
    /// configured: everyone is it).
    pub fn has(&self, name: &[u8]) -> bool {
        self.principals.contains_key(name)
            || (self.principals.is_empty() && name == DEFAULT_PRINCIPAL.as_bytes())
    }

    /// What an unauthenticated connection is: the `default` principal, if it needs no secret.
    pub fn anonymous(&self) -> Result<Arc<Principal>, EngineError> {
        match self.principals.get(DEFAULT_PRINCIPAL.as_bytes()) {
            Some((None, p)) => Ok(p.clone()),
            _ => Err(EngineError::BadCredentials),
        }
    }
}

/// Compares without stopping at the first difference (the time says nothing of the secret
/// but its length).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `$SYS` and `$SYS/...`: the MQTT broker's statistics, which no one may write.
pub fn is_reserved(key: &[u8]) -> bool {
    key == b"$SYS" || key.starts_with(b"$SYS/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_authenticate_and_patterns_decide() {
        let acl = Acl::new(&AccessConfig {
            principals: vec![
                PrincipalConfig {
                    name: "alice".into(),
                    secret: Some("s3cret".into()),
                    publish: vec!["sensors/*".into()],
                    subscribe: vec!["sensors/*".into(), "alerts".into()],
                },
                PrincipalConfig {
                    name: DEFAULT_PRINCIPAL.into(),
                    secret: Some("x".into()),
                    publish: Vec::new(),
                    subscribe: Vec::new(),
                },
            ],
        });
        assert!(matches!(acl.anonymous(), Err(EngineError::BadCredentials)));
        assert!(matches!(
            acl.authenticate(b"alice", b"wrong"),
            Err(EngineError::BadCredentials)
        ));
        assert!(matches!(
            acl.authenticate(b"nobody", b"s3cret"),
            Err(EngineError::BadCredentials)
        ));
        let alice = acl.authenticate(b"alice", b"s3cret").expect("alice");
        assert!(alice.may_publish(b"sensors/1/temp"));
        assert!(!alice.may_publish(b"alerts"));
        assert!(alice.may_subscribe(b"alerts"));
        assert!(alice.check_publish(b"orders").is_err());
        let open = Acl::new(&AccessConfig::default());
        let anyone = open.anonymous().expect("default");
        assert!(anyone.may_publish(b"anything") && anyone.may_subscribe(b""));
    }
}
