//! Engine errors as Redis error replies: the text a Redis 7.0 client expects for the same
//! failure (docs/protocol-mapping.md lists the mapping).
//!
//! Owns the wording only; it must never decide whether something is an error.

use manifold_core::engine::{EngineError, GroupError};
use manifold_core::store::SetIdRefused;

use crate::reply::Reply;

/// The reply for `e`, raised by command `cmd` (lowercase name; Redis words some errors per
/// command) on key `key` and group `group` where they matter.
pub fn engine_error(e: &EngineError, cmd: &str, key: &[u8], group: &[u8]) -> Reply {
    let key = String::from_utf8_lossy(key);
    let group = String::from_utf8_lossy(group);
    match e {
        EngineError::IdTooSmall { .. } => Reply::err(
            "The ID specified in XADD is equal or smaller than the target stream top item",
        ),
        EngineError::IdZero => Reply::err("The ID specified in XADD must be greater than 0-0"),
        EngineError::IdExhausted => {
            Reply::err("The stream has exhausted the last possible ID, unable to add more items")
        }
        EngineError::NoFields => {
            Reply::err(format!("wrong number of arguments for '{cmd}' command"))
        }
        EngineError::BadDb(_) => Reply::err("DB index is out of range"),
        EngineError::NoPermission { .. } => Reply::Error(
            "NOPERM this user has no permissions to access one of the keys used as arguments"
                .into(),
        ),
        EngineError::BadCredentials => {
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        }
        EngineError::Group(GroupError::NoGroup) => match cmd {
            "xreadgroup" => Reply::Error(format!(
                "NOGROUP No such key '{key}' or consumer group '{group}' in XREADGROUP with GROUP option"
            )),
            "xgroup" | "xinfo" => Reply::Error(format!(
                "NOGROUP No such consumer group '{group}' for key name '{key}'"
            )),
            _ => Reply::Error(format!(
                "NOGROUP No such key '{key}' or consumer group '{group}'"
            )),
        },
        EngineError::Group(GroupError::GroupExists) => {
            Reply::Error("BUSYGROUP Consumer Group name already exists".into())
        }
        EngineError::Group(GroupError::NoStream) => Reply::err(
            "The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
        ),
        EngineError::SetId(SetIdRefused::NoKey) => Reply::err("no such key"),
        EngineError::SetId(SetIdRefused::IdTooSmall) => {
            Reply::err("The ID specified in XSETID is smaller than the target stream top item")
        }
        EngineError::SetId(SetIdRefused::AddedTooSmall) => Reply::err(
            "The entries_added specified in XSETID is smaller than the target stream length",
        ),
        // A write no leader took within the wait, or a MULTI/EXEC with reads or WATCH on a
        // follower (not forwarded): what a Redis replica says, so clients raise their
        // read-only error; no leader known: Redis Cluster's retry error.
        EngineError::NotLeader { leader: Some(n) } => Reply::Error(format!(
            "READONLY You can't write against a read only replica. (node {n} leads)"
        )),
        EngineError::NotLeader { leader: None } => {
            Reply::Error("TRYAGAIN no leader is elected yet; retry in a moment".into())
        }
        // Manifold's own limits and failures: `-ERR` with the engine's text.
        other => Reply::err(other),
    }
}
