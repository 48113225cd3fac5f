//! The Raft wire decoder on arbitrary bytes (what a peer, or anything that reaches the Raft
//! port, can send): never a panic, never an allocation past the frame. A second pass fixes the
//! length and CRC up so the body decoder sees every input; whatever it accepts must encode
//! back to the very same frame (one encoding per message).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "crc.rs"]
mod crc;
use crc::crc32c;
use manifold_core::raft::wire::{FRAME_HEADER, body_len, decode, encode};

fuzz_target!(|data: &[u8]| {
    if data.len() < FRAME_HEADER {
        return;
    }
    let mut header = [0u8; FRAME_HEADER];
    header.copy_from_slice(&data[..FRAME_HEADER]);
    let body = &data[FRAME_HEADER..];
    if body_len(&header, 1 << 20).is_ok() {
        let _ = decode(&header, Bytes::copy_from_slice(body));
    }
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32c(body).to_le_bytes());
    if let Ok((from, incarnation, msg)) = decode(&header, Bytes::copy_from_slice(body)) {
        let mut out = Vec::new();
        encode(&mut out, from, incarnation, &msg);
        assert_eq!(&out[..FRAME_HEADER], &header[..], "header differs");
        assert_eq!(&out[FRAME_HEADER..], body, "an accepted frame encodes differently");
    }
});
