//! Stream IDs as Redis defines them: the ID spec of an append (`*`, `ms-*`, explicit) and how
//! it resolves against a stream's last ID. Pure functions: the proposer resolves with them, and
//! the dispatcher re-checks the result (an ID at or below the last one is not added).

use super::error::{EngineError, Result};
use crate::store::StreamId;

/// How an append names its ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdSpec {
    /// `*`: `max(leader timestamp, last ms)` and the next sequence.
    Auto,
    /// `ms-*`: the given milliseconds, the next sequence.
    AutoSeq(u64),
    /// An explicit `ms-seq`.
    Explicit(StreamId),
}

/// Resolves `spec` for a stream whose last ID is `last`, at leader timestamp `now_ms`.
pub fn resolve(spec: IdSpec, last: StreamId, now_ms: u64) -> Result<StreamId> {
    match spec {
        IdSpec::Auto if now_ms > last.ms => Ok(StreamId::new(now_ms, 0)),
        IdSpec::Auto if last.seq < u64::MAX => Ok(StreamId::new(last.ms, last.seq + 1)),
        IdSpec::Auto if last.ms < u64::MAX => Ok(StreamId::new(last.ms + 1, 0)),
        IdSpec::Auto => Err(EngineError::IdExhausted),
        // `0-*` on an empty stream is 0-1: 0-0 is never a valid ID.
        IdSpec::AutoSeq(ms) if ms > last.ms => Ok(StreamId::new(ms, u64::from(ms == 0))),
        IdSpec::AutoSeq(ms) if ms == last.ms && last.seq < u64::MAX => {
            Ok(StreamId::new(ms, last.seq + 1))
        }
        IdSpec::AutoSeq(ms) if ms == last.ms => Err(EngineError::IdExhausted),
        IdSpec::AutoSeq(_) => Err(EngineError::IdTooSmall { last }),
        IdSpec::Explicit(id) if id == StreamId::default() => Err(EngineError::IdZero),
        IdSpec::Explicit(id) if id <= last => Err(EngineError::IdTooSmall { last }),
        IdSpec::Explicit(id) => Ok(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId::new(ms, seq)
    }

    #[test]
    fn auto_ids_follow_redis() {
        assert_eq!(resolve(IdSpec::Auto, id(0, 0), 100).ok(), Some(id(100, 0)));
        assert_eq!(
            resolve(IdSpec::Auto, id(100, 4), 100).ok(),
            Some(id(100, 5))
        );
        // A clock behind the last ID keeps counting in the last millisecond.
        assert_eq!(
            resolve(IdSpec::Auto, id(200, 4), 100).ok(),
            Some(id(200, 5))
        );
        assert_eq!(
            resolve(IdSpec::Auto, id(200, u64::MAX), 100).ok(),
            Some(id(201, 0))
        );
    }

    #[test]
    fn ms_star_and_explicit_ids_follow_redis() {
        assert_eq!(
            resolve(IdSpec::AutoSeq(0), id(0, 0), 9).ok(),
            Some(id(0, 1))
        );
        assert_eq!(
            resolve(IdSpec::AutoSeq(5), id(5, 3), 9).ok(),
            Some(id(5, 4))
        );
        assert_eq!(
            resolve(IdSpec::AutoSeq(7), id(5, 3), 9).ok(),
            Some(id(7, 0))
        );
        assert!(matches!(
            resolve(IdSpec::AutoSeq(4), id(5, 3), 9),
            Err(EngineError::IdTooSmall { .. })
        ));
        assert!(matches!(
            resolve(IdSpec::AutoSeq(5), id(5, u64::MAX), 9),
            Err(EngineError::IdExhausted)
        ));
        assert!(matches!(
            resolve(IdSpec::Explicit(id(0, 0)), id(0, 0), 9),
            Err(EngineError::IdZero)
        ));
        assert!(matches!(
            resolve(IdSpec::Explicit(id(5, 3)), id(5, 3), 9),
            Err(EngineError::IdTooSmall { .. })
        ));
        assert_eq!(
            resolve(IdSpec::Explicit(id(5, 4)), id(5, 3), 9).ok(),
            Some(id(5, 4))
        );
    }
}
