//! The CommitLog's record check and entry decoder on arbitrary bytes (what a torn or
//! corrupted segment holds): never a panic. A second pass makes the same bytes pass the
//! record check (size, magic, CRC and reserved bits fixed up), so the body decoder — command,
//! sub-records, fields — sees them too; whatever it accepts must encode back to the very same
//! bytes (one encoding per entry: replicas and replays agree byte for byte).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

#[path = "crc.rs"]
mod crc;
use crc::crc32c;
use manifold_core::store::NewEntry;
use manifold_core::store::entry::{
    ENTRY_HEADER_LEN, ENTRY_MAGIC, check_record, decode_entry, encode_entry,
};

fuzz_target!(|data: &[u8]| {
    let _ = check_record(data);
    let _ = decode_entry(&Bytes::copy_from_slice(data));
    if data.len() < ENTRY_HEADER_LEN {
        return;
    }
    let mut buf = data.to_vec();
    let size = buf.len() as u32;
    buf[0..4].copy_from_slice(&size.to_le_bytes());
    buf[4..8].copy_from_slice(&ENTRY_MAGIC.to_le_bytes());
    buf[12] %= 4; // a kind byte that may or may not be valid
    buf[13] = 0;
    buf[14] = 0;
    buf[15] = 0;
    let crc = crc32c(&buf[12..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    let bytes = Bytes::from(buf);
    if let Ok(entry) = decode_entry(&bytes) {
        let again = NewEntry {
            term: entry.term,
            kind: entry.kind,
            timestamp_ms: entry.timestamp_ms,
            command: entry.command.clone(),
            records: entry.records.clone(),
        };
        let mut out = Vec::new();
        encode_entry(&mut out, &again, entry.index);
        assert_eq!(out, bytes.as_ref(), "an accepted entry encodes differently");
    }
});
