//! Topic names and topic filters (spec 4.7; 3.1.1 4.7): what a PUBLISH or a Will may name and
//! what a SUBSCRIBE may ask for. Strings are already valid UTF-8 without U+0000 (`wire`).

/// A topic name: no wildcard; at least one character (MQTT 5 allows an empty name only with a
/// topic alias, which the PUBLISH decoder checks).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', '#'])
}

/// A topic filter: at least one character; `+` only as a whole level; `#` only as the whole
/// last level. (`a+/`, `a/#/b` and `a#` are not filters.)
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            l if l.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
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
    fn filters_follow_the_spec_examples() {
        for ok in [
            "#",
            "+",
            "sport/#",
            "sport/tennis/+",
            "+/tennis/#",
            "/+",
            "+/+",
            "sport/+/player1",
            "$SYS/#",
            "a//b",
        ] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "sport+",
            "a+/",
            "a/#/b",
            "#/a",
        ] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert!(valid_name("sport/tennis/player1"));
        assert!(valid_name("/"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/+"));
        assert!(!valid_name("a/#"));
    }

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
