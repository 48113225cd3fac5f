//! The forwarded-write decoders on arbitrary bytes (what any connection to the Raft port that
//! opens with the side-channel preamble can send a leader, and what a follower reads back):
//! never a panic, never an allocation past the input. An operation the decoder accepts must
//! encode back to the very same bytes (one encoding per operation); an accepted answer must
//! encode to bytes that decode to the same answer (error texts are taken as UTF-8, lossily).
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifold_core::engine::forward_codec::{decode_answer, decode_op, encode_answer, encode_op};

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = decode_op(data) {
        assert_eq!(encode_op(&op), data, "an accepted operation encodes differently");
    }
    if let Ok((applied, answer)) = decode_answer(data) {
        let once = encode_answer(applied, &answer);
        let Ok((again, back)) = decode_answer(&once) else {
            panic!("a re-encoded answer does not decode");
        };
        assert_eq!(again, applied);
        assert_eq!(encode_answer(again, &back), once, "answer encoding is not stable");
    }
});
