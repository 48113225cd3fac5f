//! The request decoder through its public API: every framing rule and error text of Redis
//! 7.0's `processMultibulkBuffer` / `processInlineBuffer`, then properties over random
//! pipelines, random chunking and random garbage.

use bytes::{Bytes, BytesMut};
use manifold_resp::request::{Decoder, Limits, ProtocolError};
use proptest::prelude::*;

/// What a run of `decode` calls produced: the commands, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    commands: Vec<Vec<Bytes>>,
    end: Result<(), ProtocolError>,
    left: usize,
}

/// Decodes until more bytes are needed or an error.
fn drain(
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    commands: &mut Vec<Vec<Bytes>>,
) -> Result<(), ProtocolError> {
    while let Some(command) = decoder.decode(buf)? {
        commands.push(command);
    }
    Ok(())
}

/// Feeds `input` in chunks of the given sizes (cycled), decoding after each chunk.
fn feed(limits: Limits, input: &[u8], chunks: &[usize]) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut at = 0;
    let mut sizes = chunks.iter().cycle();
    while at < input.len() {
        let size = sizes.next().copied().unwrap_or(input.len()).max(1);
        let end = at.saturating_add(size).min(input.len());
        buf.extend_from_slice(&input[at..end]);
        at = end;
        if let Err(error) = drain(&mut decoder, &mut buf, &mut commands) {
            return Outcome {
                commands,
                end: Err(error),
                left: buf.len(),
            };
        }
    }
    let left = buf.len();
    Outcome {
        commands,
        end: Ok(()),
        left,
    }
}

fn all_at_once(input: &[u8]) -> Outcome {
    feed(Limits::default(), input, &[usize::MAX])
}

fn command(args: &[&[u8]]) -> Vec<Bytes> {
    args.iter().map(|arg| Bytes::copy_from_slice(arg)).collect()
}

fn decoded(input: &[u8]) -> Vec<Vec<Bytes>> {
    let outcome = all_at_once(input);
    assert_eq!(
        outcome.end,
        Ok(()),
        "input {:?}",
        String::from_utf8_lossy(input)
    );
    assert_eq!(
        outcome.left,
        0,
        "input {:?} fully consumed",
        String::from_utf8_lossy(input)
    );
    outcome.commands
}

/// The error `input` ends in, with its exact text.
fn error_text(limits: Limits, input: &[u8]) -> String {
    match feed(limits, input, &[usize::MAX]).end {
        Err(error) => error.to_string(),
        Ok(()) => panic!("expected an error for {:?}", String::from_utf8_lossy(input)),
    }
}

fn needs_more(input: &[u8]) -> bool {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(input);
    decoder.decode(&mut buf) == Ok(None)
}

// ---- multibulk ------------------------------------------------------------------------------

#[test]
fn multibulk_command_decodes() {
    assert_eq!(
        decoded(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"),
        vec![command(&[b"SET", b"key", b"value"])]
    );
}

#[test]
fn pipelined_commands_come_out_one_per_call_in_order() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf =
        BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n"[..]);
    let first = decoder.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(first, command(&[b"PING"]));
    assert_eq!(buf.len(), b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n".len());
    let second = decoder.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(second, command(&[b"ECHO", b"hi"]));
    let third = decoder.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(third, command(&[b"PING"]));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn every_prefix_of_a_command_needs_more_then_completes() {
    let input = b"*2\r\n$4\r\nECHO\r\n$11\r\nhello world\r\n";
    for split in 0..input.len() {
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&input[..split]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "prefix {split}");
        buf.extend_from_slice(&input[split..]);
        let got = decoder.decode(&mut buf).expect("valid").expect("complete");
        assert_eq!(got, command(&[b"ECHO", b"hello world"]), "split at {split}");
        assert!(buf.is_empty());
    }
}

#[test]
fn zero_and_negative_counts_are_skipped() {
    assert_eq!(
        decoded(b"*0\r\n*-1\r\n*-10\r\n*1\r\n$4\r\nPING\r\n"),
        vec![command(&[b"PING"])]
    );
    assert_eq!(decoded(b"*0\r\n"), Vec::<Vec<Bytes>>::new());
}

#[test]
fn bulks_are_binary_safe() {
    let payload = b"a\r\nb\0c\xff\r\n$2\r\n*1";
    let mut input = format!("*2\r\n$3\r\nSET\r\n${}\r\n", payload.len()).into_bytes();
    input.extend_from_slice(payload);
    input.extend_from_slice(b"\r\n");
    assert_eq!(decoded(&input), vec![command(&[b"SET", payload])]);
}

#[test]
fn empty_bulk_is_an_empty_argument() {
    assert_eq!(
        decoded(b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"),
        vec![command(&[b"ECHO", b""])]
    );
}

#[test]
fn bulk_arguments_are_split_out_without_copying() {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*1\r\n$5\r\nhello\r\n"[..]);
    let payload_at = buf[8..].as_ptr();
    let got = decoder.decode(&mut buf).expect("valid").expect("complete");
    assert_eq!(got[0].as_ptr(), payload_at);
}

#[test]
fn a_huge_claimed_count_reserves_nothing_up_front() {
    // Pre-allocating 2^31 argument slots would abort the test process.
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"*2147483647\r\n$536870912\r\n"[..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn multibulk_count_string_too_big() {
    let mut line = b"*".to_vec();
    line.resize(64 * 1024, b'1');
    assert!(needs_more(&line), "64 KiB without \\r is still waited for");
    line.push(b'1');
    assert_eq!(
        error_text(Limits::default(), &line),
        "Protocol error: too big mbulk count string"
    );
}

#[test]
fn invalid_multibulk_lengths() {
    for input in [
        &b"*abc\r\n"[..],
        b"*\r\n",
        b"*01\r\n",
        b"*+1\r\n",
        b"* 1\r\n",
        b"*1 \r\n",
        b"*-0\r\n",
        b"*-\r\n",
        b"*2147483648\r\n",
        b"*3000000000\r\n",
        b"*99999999999999999999\r\n",
        b"*1\0\r\n",
        b"*1\n$4\r\nPING\r\n",
    ] {
        assert_eq!(
            error_text(Limits::default(), input),
            "Protocol error: invalid multibulk length",
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn count_line_must_end_in_crlf() {
    // Redis skips the byte after `\r` unchecked; here it must be `\n`.
    assert!(needs_more(b"*1\r"));
    assert_eq!(
        error_text(Limits::default(), b"*1\rX$4\r\nPING\r\n"),
        "Protocol error: invalid multibulk length"
    );
}

#[test]
fn multibulk_count_over_the_limit_is_invalid() {
    let limits = Limits {
        max_multibulk_len: 2,
        ..Limits::default()
    };
    assert_eq!(
        error_text(limits, b"*3\r\n"),
        "Protocol error: invalid multibulk length"
    );
    let ok = feed(limits, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", &[usize::MAX]);
    assert_eq!(ok.commands, vec![command(&[b"a", b"b"])]);
    assert!(
        needs_more(b"*2147483647\r\n"),
        "i32::MAX is the default limit, inclusive"
    );
}

#[test]
fn bulk_count_string_too_big() {
    let mut input = b"*1\r\n$".to_vec();
    input.resize(4 + 64 * 1024, b'1');
    assert!(needs_more(&input));
    input.push(b'1');
    assert_eq!(
        error_text(Limits::default(), &input),
        "Protocol error: too big bulk count string"
    );
}

#[test]
fn expected_dollar() {
    // Redis's own protocol test: "Wrong multibulk payload header".
    assert_eq!(
        error_text(Limits::default(), b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\nfooz\r\n"),
        "Protocol error: expected '$', got 'f'"
    );
    assert_eq!(
        error_text(Limits::default(), b"*1\r\n:1\r\n"),
        "Protocol error: expected '$', got ':'"
    );
    assert_eq!(
        error_text(Limits::default(), b"*1\r\n\r\n"),
        "Protocol error: expected '$', got ' '"
    );
    assert_eq!(
        error_text(Limits::default(), b"*1\r\n\xff\r\n"),
        "Protocol error: expected '$', got '\\xff'"
    );
    assert_eq!(
        error_text(Limits::default(), b"*1\r\n\0\r\n"),
        "Protocol error: expected '$', got '\\x00'"
    );
    assert!(
        needs_more(b"*1\r\nfoo"),
        "as Redis, judged once the whole line is there"
    );
}

#[test]
fn invalid_bulk_lengths() {
    for input in [
        &b"*1\r\n$-1\r\n"[..],
        b"*3\r\n$3\r\nSET\r\n$1\r\nx\r\n$-10\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n$\r\n",
        b"*1\r\n$01\r\n",
        b"*1\r\n$+1\r\n",
        b"*1\r\n$1 \r\n",
        b"*1\r\n$536870913\r\n",
        b"*1\r\n$99999999999999999999999\r\n",
        b"*1\r\n$3\rXfoo\r\n",
    ] {
        assert_eq!(
            error_text(Limits::default(), input),
            "Protocol error: invalid bulk length",
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(
        needs_more(b"*1\r\n$536870912\r\n"),
        "512 MiB itself is allowed"
    );
}

#[test]
fn bulk_over_a_custom_limit_is_invalid() {
    let limits = Limits {
        max_bulk_len: 4,
        ..Limits::default()
    };
    assert_eq!(
        error_text(limits, b"*1\r\n$5\r\n"),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        feed(limits, b"*1\r\n$4\r\nPING\r\n", &[usize::MAX]).commands,
        vec![command(&[b"PING"])]
    );
}

#[test]
fn bulk_payload_must_be_followed_by_crlf() {
    // Redis skips these two bytes unchecked; a wrong length would then mis-frame the stream.
    assert!(needs_more(b"*1\r\n$3\r\nfoo"));
    assert!(needs_more(b"*1\r\n$3\r\nfoo\r"));
    for input in [
        &b"*1\r\n$3\r\nfooXY"[..],
        b"*1\r\n$3\r\nfoo\rX",
        b"*1\r\n$2\r\nfoo\r\n",
        b"*1\r\n$3\r\nfo\r\n\r\n",
    ] {
        assert_eq!(
            error_text(Limits::default(), input),
            "Protocol error: invalid bulk length"
        );
    }
}

// ---- inline ---------------------------------------------------------------------------------

#[test]
fn inline_commands_split_on_blanks() {
    assert_eq!(decoded(b"PING\r\n"), vec![command(&[b"PING"])]);
    assert_eq!(decoded(b"PING\n"), vec![command(&[b"PING"])]);
    assert_eq!(
        decoded(b"  SET \t key   value \r\n"),
        vec![command(&[b"SET", b"key", b"value"])]
    );
    assert_eq!(
        decoded(b"a\rb\n"),
        vec![command(&[b"a", b"b"])],
        "a \\r inside the line separates"
    );
    assert_eq!(decoded(b"PING\r\r\n"), vec![command(&[b"PING"])]);
}

#[test]
fn vertical_tab_and_form_feed_are_blanks_only_between_arguments() {
    assert_eq!(
        decoded(b"\x0b\x0cA\x0bB C\n"),
        vec![command(&[b"A\x0bB", b"C"])]
    );
}

#[test]
fn empty_inline_lines_are_skipped() {
    // Redis's own protocol test: "Handle an empty query".
    assert_eq!(decoded(b"\r\nPING\r\n"), vec![command(&[b"PING"])]);
    assert_eq!(decoded(b"\n\r\n \t \r\n"), Vec::<Vec<Bytes>>::new());
}

#[test]
fn double_quotes_take_escapes() {
    assert_eq!(
        decoded(b"SET \"a b\" \"\\x41\\x7a\\n\\r\\t\\b\\a\\\\\\\"\\q\"\r\n"),
        vec![command(&[b"SET", b"a b", b"Az\n\r\t\x08\x07\\\"q"])]
    );
    assert_eq!(
        decoded(b"\"\\xZZ\" \"\\x4\"\n"),
        vec![command(&[b"xZZ", b"x4"])]
    );
    assert_eq!(decoded(b"\"\\xff\\x00\"\n"), vec![command(&[b"\xff\x00"])]);
    assert_eq!(decoded(b"ECHO \"\"\n"), vec![command(&[b"ECHO", b""])]);
}

#[test]
fn single_quotes_take_only_escaped_quote() {
    assert_eq!(
        decoded(b"'it\\'s' 'a\\nb' '\"'\n"),
        vec![command(&[b"it's", b"a\\nb", b"\""])]
    );
}

#[test]
fn a_quote_may_open_mid_argument() {
    assert_eq!(
        decoded(b"foo\"bar baz\" x'y z'\n"),
        vec![command(&[b"foobar baz", b"xy z"])]
    );
    assert_eq!(decoded(b"\"a\"\tb\n"), vec![command(&[b"a", b"b"])]);
}

#[test]
fn unbalanced_quotes() {
    for input in [
        &b"SET \"abc\n"[..],
        b"SET 'abc\n",
        b"\"abc\"def\n",
        b"'a'b\n",
        b"\"abc\\\"\n",
        b"\"abc\\\n",
        b"set \"\"\"test-key\"\"\" test-value\n",
    ] {
        assert_eq!(
            error_text(Limits::default(), input),
            "Protocol error: unbalanced quotes in request",
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn nul_is_an_ordinary_inline_byte() {
    assert_eq!(decoded(b"ECHO a\0b\n"), vec![command(&[b"ECHO", b"a\0b"])]);
}

#[test]
fn inline_request_too_big() {
    let mut line = vec![b'a'; 64 * 1024];
    assert!(needs_more(&line));
    line.push(b'a');
    assert_eq!(
        error_text(Limits::default(), &line),
        "Protocol error: too big inline request"
    );
    // As Redis: only a line still missing its newline is judged too big.
    line.extend_from_slice(b" b\n");
    assert_eq!(decoded(&line).len(), 1);
}

// ---- query buffer limit ---------------------------------------------------------------------

#[test]
fn incomplete_command_over_the_query_buffer_limit() {
    let limits = Limits {
        max_query_buffer: 100,
        ..Limits::default()
    };
    let mut input = b"*1\r\n$1000\r\n".to_vec();
    input.resize(100, b'x');
    assert_eq!(feed(limits, &input, &[usize::MAX]).end, Ok(()));
    input.push(b'x');
    assert_eq!(
        error_text(limits, &input),
        "Protocol error: client reached max query buffer length"
    );
    let inline = vec![b'a'; 101];
    assert_eq!(
        error_text(limits, &inline),
        "Protocol error: client reached max query buffer length"
    );
}

#[test]
fn decoded_arguments_of_an_incomplete_command_count_against_the_limit() {
    let limits = Limits {
        max_query_buffer: 1000,
        ..Limits::default()
    };
    let mut input = b"*1000000\r\n".to_vec();
    for _ in 0..100 {
        input.extend_from_slice(b"$0\r\n\r\n");
    }
    assert_eq!(
        error_text(limits, &input),
        "Protocol error: client reached max query buffer length"
    );
}

#[test]
fn complete_commands_are_not_limited_by_the_query_buffer() {
    let limits = Limits {
        max_query_buffer: 64,
        ..Limits::default()
    };
    let input = b"*1\r\n$4\r\nPING\r\n".repeat(100);
    let outcome = feed(limits, &input, &[usize::MAX]);
    assert_eq!(outcome.end, Ok(()));
    assert_eq!(outcome.commands.len(), 100);
}

// ---- limits, big payloads -------------------------------------------------------------------

#[test]
fn default_limits_are_redis_defaults() {
    let limits = Limits::default();
    assert_eq!(limits.max_bulk_len, 512 * 1024 * 1024);
    assert_eq!(limits.max_multibulk_len, i32::MAX as usize);
    assert_eq!(limits.max_inline_len, 64 * 1024);
    assert_eq!(limits.max_query_buffer, 1024 * 1024 * 1024);
}

#[test]
fn big_bulk_arrives_in_64k_reads() {
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut input = format!("*3\r\n$4\r\nXADD\r\n${}\r\n", payload.len()).into_bytes();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n$1\r\nx\r\n");
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut got = None;
    for chunk in input.chunks(64 * 1024) {
        buf.extend_from_slice(chunk);
        if let Some(command) = decoder.decode(&mut buf).expect("valid") {
            assert!(got.is_none());
            got = Some(command);
        }
    }
    let got = got.expect("decoded once the last read arrived");
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].len(), payload.len());
    assert!(got[1] == payload[..]);
    assert!(buf.is_empty());
}

// ---- properties -----------------------------------------------------------------------------

/// How one command is put on the wire.
#[derive(Debug, Clone)]
enum Wire {
    Multibulk(Vec<Vec<u8>>),
    /// Plain words, no quoting needed.
    Inline(Vec<Vec<u8>>, &'static str),
    /// Any bytes, each argument quoted the way `sdscatrepr` writes it.
    Quoted(Vec<Vec<u8>>, &'static str),
    /// Something that decodes to no command.
    Empty(&'static str),
}

fn repr(arg: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in arg {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x07 => out.extend_from_slice(b"\\a"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x20..=0x7e => out.push(b),
            _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
        }
    }
    out.push(b'"');
}

impl Wire {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Wire::Multibulk(args) => {
                out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                for arg in args {
                    out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                    out.extend_from_slice(arg);
                    out.extend_from_slice(b"\r\n");
                }
            }
            Wire::Inline(args, eol) => {
                out.extend_from_slice(&args.join(&b' '));
                out.extend_from_slice(eol.as_bytes());
            }
            Wire::Quoted(args, eol) => {
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    repr(arg, out);
                }
                out.extend_from_slice(eol.as_bytes());
            }
            Wire::Empty(text) => out.extend_from_slice(text.as_bytes()),
        }
    }

    fn command(&self) -> Option<Vec<Bytes>> {
        match self {
            Wire::Multibulk(args) | Wire::Inline(args, _) | Wire::Quoted(args, _) => {
                Some(args.iter().map(|a| Bytes::copy_from_slice(a)).collect())
            }
            Wire::Empty(_) => None,
        }
    }
}

fn wire() -> impl Strategy<Value = Wire> {
    let binary = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 1..6);
    let word = prop::collection::vec("[A-Za-z0-9_.:-]{1,12}".prop_map(String::into_bytes), 1..6);
    let eol = prop_oneof![Just("\r\n"), Just("\n")];
    prop_oneof![
        3 => binary.clone().prop_map(Wire::Multibulk),
        2 => (word, eol.clone()).prop_map(|(args, eol)| Wire::Inline(args, eol)),
        2 => (binary, eol).prop_map(|(args, eol)| Wire::Quoted(args, eol)),
        1 => prop_oneof![Just("*0\r\n"), Just("*-1\r\n"), Just("\r\n"), Just("\n"), Just(" \t \r\n")]
            .prop_map(Wire::Empty),
    ]
}

fn chunking() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        prop::collection::vec(1usize..200, 1..32),
        Just(vec![usize::MAX])
    ]
}

/// Bytes that look like requests more often than uniform noise would.
fn noisy_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        2 => any::<u8>(),
        3 => prop::sample::select(b"*$\r\n0123456789-\"' \\x".to_vec()),
    ];
    prop::collection::vec(byte, 0..max)
}

fn small_limits() -> Limits {
    Limits {
        max_bulk_len: 64,
        max_multibulk_len: 16,
        max_inline_len: 40,
        max_query_buffer: 300,
    }
}

fn is_size_error(error: &ProtocolError) -> bool {
    matches!(
        error,
        ProtocolError::TooBigMultibulkCount
            | ProtocolError::TooBigBulkCount
            | ProtocolError::TooBigInline
            | ProtocolError::QueryBufferLimit
    )
}

/// Chunking changes nothing but *when* a size limit is judged: with the bytes all there at
/// once the same commands and the same content error come out.
fn check_chunking_invariance(
    limits: Limits,
    input: &[u8],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let chunked = feed(limits, input, chunks);
    let whole = feed(limits, input, &[usize::MAX]);
    for command in &chunked.commands {
        prop_assert!(command.capacity() <= (2 * command.len()).max(1024));
    }
    match &chunked.end {
        Err(error) if is_size_error(error) => {
            prop_assert!(whole.commands.starts_with(&chunked.commands));
        }
        Err(_) => {
            prop_assert_eq!(&chunked.commands, &whole.commands);
            prop_assert_eq!(&chunked.end, &whole.end);
        }
        Ok(()) => prop_assert_eq!(&chunked, &whole),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_pipeline_decodes_to_its_commands_at_any_chunking(
        wires in prop::collection::vec(wire(), 0..24),
        chunks in chunking(),
    ) {
        let mut input = Vec::new();
        for w in &wires {
            w.encode(&mut input);
        }
        let expected: Vec<Vec<Bytes>> = wires.iter().filter_map(Wire::command).collect();
        let outcome = feed(Limits::default(), &input, &chunks);
        prop_assert_eq!(outcome.end, Ok(()));
        prop_assert_eq!(outcome.commands, expected);
        prop_assert_eq!(outcome.left, 0);
    }

    #[test]
    fn random_bytes_never_panic_and_chunking_only_moves_size_errors(
        input in noisy_bytes(600),
        chunks in chunking(),
    ) {
        check_chunking_invariance(small_limits(), &input, &chunks)?;
        check_chunking_invariance(Limits::default(), &input, &chunks)?;
    }

    #[test]
    fn mutated_pipelines_never_panic(
        wires in prop::collection::vec(wire(), 1..8),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..6),
        chunks in chunking(),
    ) {
        let mut input = Vec::new();
        for w in &wires {
            w.encode(&mut input);
        }
        for (at, kind, byte) in edits {
            if input.is_empty() {
                input.push(byte);
                continue;
            }
            let i = at.index(input.len());
            match kind {
                0 => input[i] = byte,
                1 => input.insert(i, byte),
                2 => { input.remove(i); }
                _ => input.truncate(i),
            }
        }
        check_chunking_invariance(small_limits(), &input, &chunks)?;
        check_chunking_invariance(Limits::default(), &input, &chunks)?;
    }
}

proptest! {
    // The fuzz entry: many cheap cases of noise one byte at a time and all at once.
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn fuzz_noise(input in noisy_bytes(200)) {
        check_chunking_invariance(small_limits(), &input, &[1])?;
    }
}
