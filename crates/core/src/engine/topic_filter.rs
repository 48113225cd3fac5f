//! MQTT topic names and topic filters (MQTT 3.1.1 §4.7, 5.0 §4.7): validation and matching,
//! with the `$` rule. Pure functions over bytes; this module never touches state.
//!
//! - A topic name is 1..=65,535 bytes of UTF-8 without `+`, `#` or NUL.
//! - A filter is 1..=65,535 bytes of UTF-8 without NUL, where `+` fills a whole level and `#`
//!   fills the whole last level.
//! - `+` matches exactly one level (possibly empty); `#` matches its parent level and everything
//!   below it.
//! - A filter starting with a wildcard never matches a topic name starting with `$` (`#` does
//!   not see `$SYS/...`; `$SYS/#` does).

/// Longest topic name or filter (the two-byte length prefix of an MQTT string).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Empty.
    Empty,
    /// More than 65,535 bytes.
    TooLong,
    /// Not UTF-8, or holds NUL.
    BadText,
    /// A topic name holds `+` or `#`.
    WildcardInName,
    /// A filter has `+` or `#` that is not a whole level, or `#` that is not last.
    BadWildcard,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 65535 bytes",
            TopicError::BadText => "topic is not UTF-8 or holds NUL",
            TopicError::WildcardInName => "topic name holds a wildcard",
            TopicError::BadWildcard => "wildcard must fill a whole level, and # must be last",
        })
    }
}

fn check_text(s: &[u8]) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains(&0) || std::str::from_utf8(s).is_err() {
        return Err(TopicError::BadText);
    }
    Ok(())
}

/// Checks a topic name (what a PUBLISH names).
pub fn check_topic_name(name: &[u8]) -> Result<(), TopicError> {
    check_text(name)?;
    // `contains` on bytes is a vectorised search; a byte-by-byte `any` cost an MQTT encoder
    // more than everything else it does for a PUBLISH.
    if name.contains(&b'+') || name.contains(&b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter (what a SUBSCRIBE names).
pub fn check_filter(filter: &[u8]) -> Result<(), TopicError> {
    check_text(filter)?;
    let mut levels = filter.split(|b| *b == b'/').peekable();
    while let Some(level) = levels.next() {
        let wild = level.iter().any(|b| matches!(b, b'+' | b'#'));
        let ok = match level {
            _ if !wild => true,
            b"+" => true,
            b"#" => levels.peek().is_none(),
            _ => false,
        };
        if !ok {
            return Err(TopicError::BadWildcard);
        }
    }
    Ok(())
}

/// An MQTT shared subscription `$share/{group}/{filter}`: its group and filter (not checked).
pub fn shared_subscription(filter: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = filter.strip_prefix(b"$share/")?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    Some((&rest[..slash], &rest[slash + 1..]))
}

/// Whether the valid filter `filter` matches the valid topic name `name`.
pub fn filter_matches(filter: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'$') && matches!(filter.first(), Some(b'+' | b'#')) {
        return false;
    }
    let mut f = filter.split(|b| *b == b'/');
    let mut n = name.split(|b| *b == b'/');
    loop {
        match (f.next(), n.next()) {
            // `#` matches the parent level too: `a/#` matches `a`.
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, name: &str) -> bool {
        assert_eq!(check_filter(filter.as_bytes()), Ok(()), "{filter}");
        assert_eq!(check_topic_name(name.as_bytes()), Ok(()), "{name}");
        filter_matches(filter.as_bytes(), name.as_bytes())
    }

    /// The examples of MQTT 3.1.1 §4.7.1 and §4.7.2.
    #[test]
    fn spec_examples() {
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(m("sport/#", "sport"));
        assert!(m("#", "sport/tennis"));
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        assert!(!m("#", "$SYS/monitor/Clients"));
        assert!(!m("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(m("$SYS/#", "$SYS/monitor/Clients"));
        assert!(m("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(!m("ACCOUNTS", "Accounts"));
        assert!(m("a//b", "a//b"));
        assert!(!m("a/b", "a/b/c"));
        assert!(!m("a/b/c", "a/b"));
    }

    #[test]
    fn invalid_names_and_filters() {
        assert_eq!(check_filter(b"sport/tennis#"), Err(TopicError::BadWildcard));
        assert_eq!(
            check_filter(b"sport/tennis/#/ranking"),
            Err(TopicError::BadWildcard)
        );
        assert_eq!(check_filter(b"sport+"), Err(TopicError::BadWildcard));
        assert_eq!(check_filter(b""), Err(TopicError::Empty));
        assert_eq!(check_filter(b"a\0b"), Err(TopicError::BadText));
        assert_eq!(check_filter(&[0xff]), Err(TopicError::BadText));
        assert_eq!(check_filter(b"+/tennis/#"), Ok(()));
        assert_eq!(check_topic_name(b"a/+"), Err(TopicError::WildcardInName));
        assert_eq!(check_topic_name(b"a/#"), Err(TopicError::WildcardInName));
        assert_eq!(
            check_topic_name(&vec![b'a'; MAX_TOPIC_LEN + 1]),
            Err(TopicError::TooLong)
        );
        assert_eq!(check_topic_name(b"/"), Ok(()));
    }

    /// A second, recursive reading of the matching rules.
    fn reference(filter: &[&[u8]], name: &[&[u8]]) -> bool {
        match (filter.split_first(), name.split_first()) {
            (Some((&b"#", _)), _) => true,
            (Some((f, fr)), Some((n, nr))) => (*f == b"+" || f == n) && reference(fr, nr),
            (None, None) => true,
            _ => false,
        }
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_the_reference(
            filter in "[ab$+#/]{1,8}",
            name in "[ab$/]{1,8}",
        ) {
            let (filter, name) = (filter.as_bytes(), name.as_bytes());
            if check_filter(filter).is_ok() {
                let dollar = name[0] == b'$' && matches!(filter[0], b'+' | b'#');
                let f: Vec<&[u8]> = filter.split(|b| *b == b'/').collect();
                let n: Vec<&[u8]> = name.split(|b| *b == b'/').collect();
                proptest::prop_assert_eq!(filter_matches(filter, name), !dollar && reference(&f, &n));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(filter in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
                                       name in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            let _ = check_filter(&filter);
            let _ = check_topic_name(&name);
            let _ = filter_matches(&filter, &name);
        }
    }
}
