//! Redis's glob patterns (KEYS, SCAN MATCH, ACL key patterns): `*`, `?`, `[abc]`, `[^a]`,
//! `[a-z]`, `\x`. Pure matching; nothing else. Matching never recurses and takes at most
//! `O(pattern × subject)` steps, whatever a client sends as a pattern.

/// Redis's glob (KEYS, SCAN MATCH): `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
///
/// Every element but `*` matches exactly one byte, so the classic two-pointer match with one
/// backtrack point (the last `*` seen) is exact: a later `*` can absorb whatever an earlier one
/// would, so earlier ones never need revisiting. Runs of `*` count as one.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    if pattern == b"*" {
        return true; // every key (an ACL's `~*`, checked on every write): nothing to walk
    }
    let (mut p, mut i) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern position after it, subject position).
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if let Some((true, len)) = element(pattern, p, s[i]) {
            p += len;
            i += 1;
            continue;
        }
        match star {
            Some((after, from)) => {
                star = Some((after, from + 1));
                p = after;
                i = from + 1;
            }
            None => return false,
        }
    }
    while pattern.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pattern.len()
}

/// The non-`*` element of `pattern` at `p` against byte `c`: whether it matches, and how many
/// pattern bytes it spans. `None` past the pattern's end. An unterminated class matches
/// nothing.
fn element(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let rest = pattern.get(p..).filter(|r| !r.is_empty())?;
    Some(match rest {
        [b'?', ..] => (true, 1),
        [b'[', class @ ..] => {
            let (negate, mut q) = match class.split_first() {
                Some((b'^', r)) => (true, r),
                _ => (false, class),
            };
            let mut matched = false;
            loop {
                match q {
                    [] => return Some((false, rest.len())),
                    [b']', after @ ..] => {
                        q = after;
                        break;
                    }
                    [b'\\', x, after @ ..] => {
                        matched |= *x == c;
                        q = after;
                    }
                    [a, b'-', z, after @ ..] if *z != b']' => {
                        let (lo, hi) = if a <= z { (*a, *z) } else { (*z, *a) };
                        matched |= lo <= c && c <= hi;
                        q = after;
                    }
                    [x, after @ ..] => {
                        matched |= *x == c;
                        q = after;
                    }
                }
            }
            (matched != negate, rest.len() - q.len())
        }
        [b'\\', x, ..] => (*x == c, 2),
        [x, ..] => (*x == c, 1),
        [] => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::glob_match;
    use proptest::prelude::*;

    #[test]
    fn glob_follows_redis() {
        assert!(glob_match(b"*", b"anything"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"h?llo", b"hello"));
        assert!(glob_match(b"h*llo", b"heeeello"));
        assert!(glob_match(b"h[ae]llo", b"hallo"));
        assert!(!glob_match(b"h[^e]llo", b"hello"));
        assert!(glob_match(b"h[a-b]llo", b"hbllo"));
        assert!(glob_match(b"h\\*llo", b"h*llo"));
        assert!(!glob_match(b"h\\*llo", b"hello"));
        assert!(!glob_match(b"a[bc", b"ab"));
        assert!(glob_match(b"a\\", b"a\\"));
        assert!(glob_match(b"*b*", b"abc"));
        assert!(!glob_match(b"*b*d", b"abc"));
    }

    #[test]
    fn hostile_patterns_are_cheap() {
        // A hundred thousand stars: no recursion to overflow.
        let stars = vec![b'*'; 100_000];
        assert!(glob_match(&stars, b"key"));
        // Exponential for naive backtracking: `*a*a*a...*b` against `aaaa...`.
        let mut p = Vec::new();
        for _ in 0..60 {
            p.extend_from_slice(b"*a");
        }
        p.extend_from_slice(b"*b");
        let s = vec![b'a'; 5_000];
        let started = std::time::Instant::now();
        assert!(!glob_match(&p, &s));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    /// The recursive definition, for short inputs only.
    fn reference(pattern: &[u8], s: &[u8]) -> bool {
        match pattern.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| reference(rest, &s[i..])),
            Some((b'?', rest)) => !s.is_empty() && reference(rest, &s[1..]),
            Some((b'[', _)) | Some((b'\\', _)) => {
                match super::element(pattern, 0, *s.first().unwrap_or(&0)) {
                    Some((m, len)) => !s.is_empty() && m && reference(&pattern[len..], &s[1..]),
                    None => false,
                }
            }
            Some((c, rest)) => s.first() == Some(c) && reference(rest, &s[1..]),
        }
    }

    proptest! {
        #[test]
        fn matches_the_recursive_definition(
            pattern in proptest::collection::vec(prop_oneof![
                Just(b'*'), Just(b'?'), Just(b'['), Just(b']'), Just(b'^'), Just(b'-'),
                Just(b'\\'), Just(b'a'), Just(b'b'), Just(b'c')
            ], 0..10),
            s in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'*')], 0..10),
        ) {
            prop_assert_eq!(glob_match(&pattern, &s), reference(&pattern, &s), "{:?} {:?}",
                String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&s));
        }
    }
}
