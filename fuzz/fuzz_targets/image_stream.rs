//! The image-transfer decoders on arbitrary bytes (what a leader — or anything that passed the
//! node-to-node handshake — sends a follower fetching an image): never a panic, never an
//! allocation past the input. A manifest the decoder accepts encodes back to the very same
//! bytes (a second pass fixes its CRC up so the field checks see every input); so does every
//! frame read from the stream (Data frames get the same CRC fix-up).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "crc.rs"]
mod crc;
use crc::crc32c;
use manifold_core::engine::image_transfer::ImageFrame;
use manifold_core::store::image::Manifest;

fn manifest_round_trips(bytes: &[u8]) {
    if let Some(m) = Manifest::decode(bytes) {
        assert_eq!(m.encode(), bytes, "an accepted manifest encodes differently");
    }
}

fuzz_target!(|data: &[u8]| {
    manifest_round_trips(data);
    let mut fixed = data.to_vec();
    fixed.extend_from_slice(&crc32c(data).to_le_bytes());
    manifest_round_trips(&fixed);

    let mut stream = data.to_vec();
    if stream.len() >= 21 && stream[0] == 2 {
        let len = u32::from_le_bytes([stream[13], stream[14], stream[15], stream[16]]) as usize;
        if let Some(payload) = stream.get(21..21 + len) {
            let crc = crc32c(payload).to_le_bytes();
            stream[17..21].copy_from_slice(&crc);
        }
    }
    let mut r = &stream[..];
    loop {
        let before = r;
        let Ok(frame) = ImageFrame::read(&mut r) else {
            break;
        };
        let used = &before[..before.len() - r.len()];
        if let ImageFrame::Refused(why) = &frame
            && std::str::from_utf8(&used[3..]).ok() != Some(why.as_str())
        {
            continue; // taken lossily as UTF-8
        }
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(again, used, "an accepted frame encodes differently");
        if let ImageFrame::Manifest(bytes) = &frame {
            manifest_round_trips(bytes);
        }
    }
});
