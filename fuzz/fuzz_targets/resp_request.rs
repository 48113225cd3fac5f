//! The RESP request decoder on arbitrary bytes, fed in arbitrary pieces (as reads cut a
//! stream): it must never panic, must take the same commands and reach the same error
//! whatever the pieces, and must never hand out more than it was given.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use manifold_resp::request::{Decoder, Limits};

/// Small limits, so the fuzzer reaches every limit's error with short inputs.
const LIMITS: Limits = Limits {
    max_bulk_len: 64,
    max_multibulk_len: 16,
    max_inline_len: 48,
    max_query_buffer: 256,
};

#[derive(Debug, PartialEq)]
enum Outcome {
    Commands(Vec<Vec<Bytes>>),
    Failed(Vec<Vec<Bytes>>, String),
}

/// Feeds `input` to a fresh decoder in pieces of the given sizes (the rest in one piece).
fn decode(input: &[u8], cuts: &[u8], unauthenticated: bool) -> Outcome {
    let mut decoder = Decoder::new(LIMITS);
    decoder.set_unauthenticated(unauthenticated);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter();
    while at < input.len() {
        let take = match cuts.next() {
            Some(&c) => (usize::from(c) % 32 + 1).min(input.len() - at),
            None => input.len() - at,
        };
        buf.extend_from_slice(&input[at..at + take]);
        at += take;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => {
                    assert!(
                        !args.is_empty(),
                        "an empty command is skipped, not returned"
                    );
                    let total: usize = args.iter().map(Bytes::len).sum();
                    assert!(total <= at, "more argument bytes than were given");
                    commands.push(args);
                }
                Ok(None) => break,
                Err(e) => return Outcome::Failed(commands, e.to_string()),
            }
        }
    }
    Outcome::Commands(commands)
}

fuzz_target!(|data: &[u8]| {
    // First byte: flags; then up to 8 piece sizes; the rest is the stream.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(flags >> 4).min(8).min(rest.len());
    let (cuts, input) = rest.split_at(n);
    let unauthenticated = flags & 1 == 1;
    let whole = decode(input, &[], unauthenticated);
    let pieces = decode(input, cuts, unauthenticated);
    // The size limits on what is held without its end (a header or inline line without its
    // terminator, an incomplete command) are checked when more is needed, as Redis checks
    // them after each read: where they trip depends on how the stream was cut. Then what was
    // decoded before must still agree; every other outcome must be the same.
    let cut_dependent = |o: &Outcome| {
        matches!(o, Outcome::Failed(_, e)
            if e.contains("query buffer") || e.contains("too big"))
    };
    if cut_dependent(&whole) || cut_dependent(&pieces) {
        let (Outcome::Commands(a) | Outcome::Failed(a, _)) = &whole;
        let (Outcome::Commands(b) | Outcome::Failed(b, _)) = &pieces;
        let n = a.len().min(b.len());
        assert_eq!(a[..n], b[..n], "the pieces changed what was decoded");
    } else {
        assert_eq!(whole, pieces, "the pieces changed what was decoded");
    }
});
