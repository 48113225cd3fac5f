//! An index of the db-0 topics that are valid MQTT topic names, by level, so that finding the
//! topics a filter matches visits the matching branches instead of every topic. Built from the
//! store's topic table, then kept up to date with the topics created and dropped since (or
//! rebuilt when the store no longer remembers them all). Pure data: it never reads the store.

use std::collections::HashMap;

use bytes::Bytes;

use super::topic_filter;

/// One level of the trie.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Bytes, Node>,
    /// The full topic key when a topic ends at this level.
    topic: Option<Bytes>,
}

/// The topics, by level.
#[derive(Debug, Default)]
pub struct TopicIndex {
    root: Node,
}

impl TopicIndex {
    /// Indexes the keys that are valid MQTT topic names (others are left out: no filter
    /// matches them).
    pub fn build(keys: impl IntoIterator<Item = Bytes>) -> Self {
        let mut index = TopicIndex::default();
        for key in keys {
            index.insert(key);
        }
        index
    }

    /// Adds a topic (a key that is not a valid topic name is left out).
    pub fn insert(&mut self, key: Bytes) {
        if topic_filter::check_topic_name(&key).is_err() {
            return;
        }
        let mut node = &mut self.root;
        for level in key.split(|b| *b == b'/') {
            node = node.children.entry(key.slice_ref(level)).or_default();
        }
        node.topic = Some(key);
    }

    /// Removes a topic, and the levels it leaves empty.
    pub fn remove(&mut self, key: &[u8]) {
        let levels: Vec<&[u8]> = key.split(|b| *b == b'/').collect();
        remove_at(&mut self.root, &levels);
    }

    /// The topics `filter` (a valid MQTT filter) matches, with the `$` rule: a filter starting
    /// with a wildcard does not match topics starting with `$`.
    pub fn matching(&self, filter: &[u8]) -> Vec<Bytes> {
        let levels: Vec<&[u8]> = filter.split(|b| *b == b'/').collect();
        let mut out = Vec::new();
        walk(&self.root, &levels, true, &mut out);
        out
    }
}

/// Removes the topic at `levels` below `node`; whether `node` is left empty.
fn remove_at(node: &mut Node, levels: &[&[u8]]) -> bool {
    match levels.split_first() {
        None => node.topic = None,
        Some((level, rest)) => {
            if let Some(child) = node.children.get_mut(*level)
                && remove_at(child, rest)
            {
                node.children.remove(*level);
            }
        }
    }
    node.topic.is_none() && node.children.is_empty()
}

fn walk(node: &Node, levels: &[&[u8]], first: bool, out: &mut Vec<Bytes>) {
    let Some((level, rest)) = levels.split_first() else {
        out.extend(node.topic.clone());
        return;
    };
    // The `$` rule applies to the first level only.
    let visible = |name: &Bytes| !(first && name.first() == Some(&b'$'));
    match *level {
        b"#" => {
            // `#` matches the parent level too ("a/#" matches "a"), except at the top.
            if !first {
                out.extend(node.topic.clone());
            }
            collect_all(node, first, out);
        }
        b"+" => {
            for (name, child) in &node.children {
                if visible(name) {
                    walk(child, rest, false, out);
                }
            }
        }
        exact => {
            if let Some(child) = node.children.get(exact) {
                walk(child, rest, false, out);
            }
        }
    }
}

/// Every topic below `node` (its children and their descendants), the `$` rule applied to the
/// first level.
fn collect_all(node: &Node, first: bool, out: &mut Vec<Bytes>) {
    for (name, child) in &node.children {
        if first && name.first() == Some(&b'$') {
            continue;
        }
        out.extend(child.topic.clone());
        collect_all(child, false, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$SYS".to_string())
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..4).prop_flat_map(
            |l| {
                let base = l.join("/");
                prop_oneof![
                    Just(base.clone()),
                    Just(format!("{base}/#")),
                    Just("#".to_string())
                ]
            },
        )
    }

    proptest! {
        #[test]
        fn the_index_finds_exactly_what_the_filter_rules_match(
            names in proptest::collection::vec(name(), 0..12),
            filter in filter(),
        ) {
            let keys: Vec<Bytes> = names.iter().map(|n| Bytes::from(n.clone())).collect();
            let index = TopicIndex::build(keys.clone());
            let mut got: Vec<Bytes> = index.matching(filter.as_bytes());
            got.sort();
            let mut want: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| topic_filter::check_topic_name(k).is_ok())
                .filter(|k| topic_filter::filter_matches(filter.as_bytes(), k))
                .collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(got, want.clone(), "filter {}", filter);
            // Built one change at a time, with removals, it answers the same.
            let mut grown = TopicIndex::default();
            for n in &names {
                grown.insert(Bytes::from(n.clone()));
                grown.insert(Bytes::from(format!("{n}/gone")));
            }
            for n in &names {
                grown.remove(format!("{n}/gone").as_bytes());
            }
            let mut got = grown.matching(filter.as_bytes());
            got.sort();
            prop_assert_eq!(got, want, "grown, filter {}", filter);
        }
    }
}
