//! The first bytes of every connection between nodes: who calls, for what (a Raft lane or
//! forwarded writes), with which protocol version, and proof that it holds the cluster's
//! shared secret. A connection that fails any of it is closed before a frame is read.
//!
//! ```text
//! caller → listener   hello      "MNRH" version:u16 kind:u8 from:u64          (15 bytes)
//! listener → caller   challenge  status:u8 nonce:[u8; 16]                      (17 bytes)
//!                                status 0 = go on, 1 = version not spoken (then closed)
//! caller → listener   proof      HMAC-SHA256(secret, "manifold/raft" nonce kind from)  (32)
//! listener → caller   verdict    status:u8   0 = accepted, 2 = wrong secret (then closed)
//! ```
//! All integers little-endian. No secret configured is the empty key: every node of a group
//! must be given the same secret (or none). The nonce comes from the OS's random source.
//! Owns the bytes and their checks; the IO around them is `transport.rs`'s and `forward.rs`'s.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::message::NodeId;

/// The node-to-node protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
pub const HELLO_LEN: usize = 15;
pub const CHALLENGE_LEN: usize = 17;
pub const PROOF_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"MNRH";

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raft messages (a lane).
    Raft = 0,
    /// Forwarded writes and their answers.
    Forward = 1,
    /// A follower fetching an image of the leader (`engine/image_transfer.rs`).
    Image = 2,
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("not a Manifold node-to-node connection")]
    NotManifold,
    #[error("protocol version {0} not spoken here (this node speaks {PROTOCOL_VERSION})")]
    Version(u16),
    #[error("connection kind {0} unknown")]
    Kind(u8),
    #[error("the peer speaks another protocol version")]
    PeerVersion,
    #[error("the cluster secret does not match")]
    Secret,
    #[error("malformed handshake")]
    Malformed,
}

/// The caller's hello.
pub fn hello(from: NodeId, kind: Kind) -> [u8; HELLO_LEN] {
    let mut b = [0u8; HELLO_LEN];
    b[..4].copy_from_slice(MAGIC);
    b[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    b[6] = kind as u8;
    b[7..].copy_from_slice(&from.to_le_bytes());
    b
}

/// The listener's reading of a hello: the kind and the caller.
pub fn read_hello(b: &[u8; HELLO_LEN]) -> Result<(Kind, NodeId), HandshakeError> {
    if &b[..4] != MAGIC {
        return Err(HandshakeError::NotManifold);
    }
    let version = u16::from_le_bytes([b[4], b[5]]);
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version(version));
    }
    let kind = match b[6] {
        0 => Kind::Raft,
        1 => Kind::Forward,
        2 => Kind::Image,
        k => return Err(HandshakeError::Kind(k)),
    };
    let mut from = [0u8; 8];
    from.copy_from_slice(&b[7..]);
    Ok((kind, NodeId::from_le_bytes(from)))
}

/// The listener's challenge (status 0 and a fresh nonce), or its refusal of the version.
pub fn challenge(accepted: bool) -> [u8; CHALLENGE_LEN] {
    let mut b = [0u8; CHALLENGE_LEN];
    if !accepted {
        b[0] = 1;
        return b;
    }
    b[1..].copy_from_slice(&nonce());
    b
}

/// The caller's proof for a challenge it read.
pub fn proof(
    secret: &[u8],
    challenge: &[u8; CHALLENGE_LEN],
    from: NodeId,
    kind: Kind,
) -> Result<[u8; PROOF_LEN], HandshakeError> {
    match challenge[0] {
        0 => {}
        1 => return Err(HandshakeError::PeerVersion),
        _ => return Err(HandshakeError::Malformed),
    }
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&challenge[1..]);
    Ok(mac(secret, &nonce, kind, from))
}

/// The listener's check of a proof (constant time).
pub fn verify(
    secret: &[u8],
    challenge: &[u8; CHALLENGE_LEN],
    from: NodeId,
    kind: Kind,
    proof: &[u8; PROOF_LEN],
) -> Result<(), HandshakeError> {
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&challenge[1..]);
    let mut m = keyed(secret);
    feed(&mut m, &nonce, kind, from);
    m.verify_slice(proof).map_err(|_| HandshakeError::Secret)
}

/// The listener's verdict byte; the caller's reading of it.
pub fn verdict(ok: bool) -> u8 {
    if ok { 0 } else { 2 }
}

pub fn read_verdict(b: u8) -> Result<(), HandshakeError> {
    match b {
        0 => Ok(()),
        2 => Err(HandshakeError::Secret),
        _ => Err(HandshakeError::Malformed),
    }
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length")
}

fn feed(m: &mut Hmac<Sha256>, nonce: &[u8; 16], kind: Kind, from: NodeId) {
    m.update(b"manifold/raft");
    m.update(nonce);
    m.update(&[kind as u8]);
    m.update(&from.to_le_bytes());
}

fn mac(secret: &[u8], nonce: &[u8; 16], kind: Kind, from: NodeId) -> [u8; PROOF_LEN] {
    let mut m = keyed(secret);
    feed(&mut m, nonce, kind, from);
    m.finalize().into_bytes().into()
}

/// 16 bytes from the OS's random source (a clock-and-address mix if it cannot be read).
pub(crate) fn nonce() -> [u8; 16] {
    use std::io::Read;
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return b;
    }
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for (i, chunk) in b.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now ^ i as u64);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_right_secret_passes_and_anything_else_is_refused() {
        let h = hello(3, Kind::Forward);
        assert_eq!(read_hello(&h), Ok((Kind::Forward, 3)));
        let c = challenge(true);
        let p = proof(b"s3cret", &c, 3, Kind::Forward).expect("proof");
        assert_eq!(verify(b"s3cret", &c, 3, Kind::Forward, &p), Ok(()));
        assert_eq!(
            verify(b"other", &c, 3, Kind::Forward, &p),
            Err(HandshakeError::Secret)
        );
        assert_eq!(
            verify(b"s3cret", &c, 4, Kind::Forward, &p),
            Err(HandshakeError::Secret),
            "the proof names the caller"
        );
        assert_eq!(
            verify(b"s3cret", &challenge(true), 3, Kind::Forward, &p),
            Err(HandshakeError::Secret),
            "a proof for another nonce is refused (no replay)"
        );
        let mut bad = h;
        bad[4] = 9;
        assert_eq!(read_hello(&bad), Err(HandshakeError::Version(9)));
        assert_eq!(
            proof(b"", &challenge(false), 3, Kind::Raft),
            Err(HandshakeError::PeerVersion)
        );
        let mut junk = h;
        junk[0] = b'X';
        assert_eq!(read_hello(&junk), Err(HandshakeError::NotManifold));
        assert_eq!(read_verdict(verdict(false)), Err(HandshakeError::Secret));
    }
}
