//! Topic names and topic filters (spec 4.7; 3.1.1 4.7): what a PUBLISH or a Will may name and
//! what a SUBSCRIBE may ask for — the engine's rules (`topic_filter`), plus the form of a
//! shared subscription (`$share/{group}/{filter}`, spec 4.8.2).

use manifold_core::engine::topic_filter;

/// A topic name (the engine's rule: one place decides what a topic is): no wildcard, no
/// U+0000, at least one character. (MQTT 5 allows an empty name only with a topic alias,
/// which the PUBLISH decoder checks.)
pub fn valid_name(name: &str) -> bool {
    topic_filter::check_topic_name(name.as_bytes()).is_ok()
}

/// A topic filter (the engine's rule): at least one character; `+` only as a whole level; `#`
/// only as the whole last level. (`a+/`, `a/#/b` and `a#` are not filters.)
pub fn valid_filter(filter: &str) -> bool {
    topic_filter::check_filter(filter.as_bytes()).is_ok()
}

/// A shared subscription's parts, `$share/{group}/{filter}`: `None` if `filter` is not one,
/// `Some(Err)` if it is one without a valid group or filter (spec 4.8.2: the group is at least
/// one character with no `/`, `+` or `#`, followed by `/` and a filter).
pub fn shared(filter: &str) -> Option<Result<(&str, &str), &'static str>> {
    let rest = filter.strip_prefix("$share/")?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err("a shared subscription has no topic filter"));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Some(Err(
            "a shared subscription's group name is empty or has a wildcard",
        ));
    }
    if !valid_filter(inner) {
        return Some(Err("a shared subscription's topic filter is not valid"));
    }
    Some(Ok((group, inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_name_a_group_and_a_filter() {
        assert_eq!(shared("a/b"), None);
        assert_eq!(shared("$share/g/a/+"), Some(Ok(("g", "a/+"))));
        assert!(matches!(shared("$share/g"), Some(Err(_))));
        assert!(matches!(shared("$share//a"), Some(Err(_))));
        assert!(matches!(shared("$share/g+/a"), Some(Err(_))));
        assert!(matches!(shared("$share/g/a+"), Some(Err(_))));
    }
}
