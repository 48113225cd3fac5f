//! Moving an image from a leader to a follower the retained log no longer reaches: the
//! follower, offered one (`Action::FetchImage`), connects to the leader's Raft listener with
//! the `Image` handshake kind; the leader exports an image ([`super::image`]) and streams it;
//! the follower checks every frame, stages the files ([`crate::store::image::Installer`]) and,
//! once the whole image is durable, asks to be restarted on it (`Engine::restart_requested`).
//!
//! ```text
//! leader → follower, after the handshake:
//! tag 1  Manifest  len:u32 crc:u32 bytes          (the image's manifest; len <= 64 MiB)
//! tag 2  Data      file:u32 offset:u64 len:u32 crc:u32 bytes   (len <= 1 MiB)
//! tag 3  Zeros     file:u32 offset:u64 len:u32    (a run of zeros, len <= 1 MiB)
//! tag 4  End
//! tag 5  Refused   len:u16 bytes (UTF-8: why no image)
//! ```
//! All integers little-endian; CRCs are CRC32C of the bytes. The manifest comes first; then
//! each file's bytes in order, from offset 0 to its `data_len`, file after file; then `End`.
//! Owns the frames and both ends of the transfer. It must never stage a byte the frame's CRC
//! does not vouch for, nor declare an image whole before every byte of every file arrived.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Inner, Result};
use crate::raft::NodeId;
use crate::raft::handshake::Kind;
use crate::store::StoreError;
use crate::store::image::{Installer, Manifest};

/// Largest manifest accepted.
pub const MAX_MANIFEST: usize = 64 << 20;
/// Bytes per data or zeros frame.
pub const CHUNK: usize = 1 << 20;
/// A peer silent for this long ends the transfer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// One frame of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFrame {
    Manifest(Vec<u8>),
    Data {
        file: u32,
        offset: u64,
        bytes: Vec<u8>,
    },
    Zeros {
        file: u32,
        offset: u64,
        len: u32,
    },
    End,
    Refused(String),
}

impl ImageFrame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ImageFrame::Manifest(b) => {
                out.push(1);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(&crc32c::crc32c(b).to_le_bytes());
                out.extend_from_slice(b);
            }
            ImageFrame::Data {
                file,
                offset,
                bytes,
            } => {
                out.push(2);
                out.extend_from_slice(&file.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                out.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
                out.extend_from_slice(bytes);
            }
            ImageFrame::Zeros { file, offset, len } => {
                out.push(3);
                out.extend_from_slice(&file.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            ImageFrame::End => out.push(4),
            ImageFrame::Refused(why) => {
                let why = &why.as_bytes()[..why.len().min(u16::MAX as usize)];
                out.push(5);
                out.extend_from_slice(&(why.len() as u16).to_le_bytes());
                out.extend_from_slice(why);
            }
        }
    }

    /// Reads one frame; `InvalidData` for anything malformed (a bad tag, a length past its
    /// limit, a CRC mismatch).
    pub fn read(r: &mut impl Read) -> io::Result<ImageFrame> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        let u32_of = |r: &mut dyn Read| -> io::Result<u32> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            Ok(u32::from_le_bytes(b))
        };
        let u64_of = |r: &mut dyn Read| -> io::Result<u64> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        };
        let checked = |r: &mut dyn Read, len: usize, crc: u32| -> io::Result<Vec<u8>> {
            let bytes = read_len(r, len)?;
            if crc32c::crc32c(&bytes) != crc {
                return Err(bad("an image frame's crc does not match"));
            }
            Ok(bytes)
        };
        match tag[0] {
            1 => {
                let len = u32_of(r)? as usize;
                if len > MAX_MANIFEST {
                    return Err(bad("an image manifest past its limit"));
                }
                let crc = u32_of(r)?;
                Ok(ImageFrame::Manifest(checked(r, len, crc)?))
            }
            2 => {
                let file = u32_of(r)?;
                let offset = u64_of(r)?;
                let len = u32_of(r)? as usize;
                if len == 0 || len > CHUNK {
                    return Err(bad("an image chunk of a bad length"));
                }
                let crc = u32_of(r)?;
                Ok(ImageFrame::Data {
                    file,
                    offset,
                    bytes: checked(r, len, crc)?,
                })
            }
            3 => {
                let file = u32_of(r)?;
                let offset = u64_of(r)?;
                let len = u32_of(r)?;
                if len == 0 || len as usize > CHUNK {
                    return Err(bad("a run of zeros of a bad length"));
                }
                Ok(ImageFrame::Zeros { file, offset, len })
            }
            4 => Ok(ImageFrame::End),
            5 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b)?;
                let why = read_len(r, u16::from_le_bytes(b) as usize)?;
                Ok(ImageFrame::Refused(
                    String::from_utf8_lossy(&why).into_owned(),
                ))
            }
            _ => Err(bad("unknown image frame")),
        }
    }
}

/// Exactly `len` bytes, the buffer growing only as they arrive (a length claimed by a peer
/// allocates nothing it did not send).
fn read_len(r: &mut dyn Read, len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len.min(64 * 1024));
    r.take(len as u64).read_to_end(&mut out)?;
    if out.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

/// The follower's side of a transfer after the manifest: where the next bytes must go, so
/// that every byte of every file arrives once, in order.
#[derive(Debug)]
pub struct ImageReceiver {
    installer: Installer,
    file: usize,
    offset: u64,
}

impl ImageReceiver {
    pub fn new(installer: Installer) -> Self {
        let mut r = ImageReceiver {
            installer,
            file: 0,
            offset: 0,
        };
        r.skip_finished();
        r
    }

    /// Moves past files whose bytes all arrived (and empty ones).
    fn skip_finished(&mut self) {
        let files = &self.installer.manifest().files;
        while files
            .get(self.file)
            .is_some_and(|f| self.offset >= f.data_len)
        {
            self.file += 1;
            self.offset = 0;
        }
    }

    fn out_of_order(&self, file: u32, offset: u64) -> StoreError {
        StoreError::Config(format!(
            "image bytes for file {file} at {offset} where file {} at {} belongs",
            self.file, self.offset
        ))
    }

    /// Takes one frame after the manifest: `Ok(true)` once `End` closed a whole image (staged
    /// durably), `Ok(false)` for more to come; an error for a frame out of place.
    pub fn accept(&mut self, frame: ImageFrame) -> std::result::Result<bool, StoreError> {
        let (file, offset, len) = match &frame {
            ImageFrame::Data {
                file,
                offset,
                bytes,
            } => (*file, *offset, bytes.len() as u64),
            ImageFrame::Zeros { file, offset, len } => (*file, *offset, u64::from(*len)),
            ImageFrame::End if self.file >= self.installer.manifest().files.len() => {
                return Ok(true);
            }
            ImageFrame::End => {
                return Err(StoreError::Config(format!(
                    "the image ended before file {} was whole",
                    self.file
                )));
            }
            ImageFrame::Refused(why) => {
                return Err(StoreError::Config(format!("the leader refused: {why}")));
            }
            ImageFrame::Manifest(_) => {
                return Err(StoreError::Config("a second image manifest".into()));
            }
        };
        if file as usize != self.file || offset != self.offset {
            return Err(self.out_of_order(file, offset));
        }
        if let ImageFrame::Data { bytes, .. } = &frame {
            // The installer refuses bytes past the file's data length.
            self.installer.write(self.file, offset, bytes)?;
        } else {
            let data_len = self.installer.manifest().files[self.file].data_len;
            if offset + len > data_len {
                return Err(self.out_of_order(file, offset + len));
            }
        }
        self.offset += len;
        self.skip_finished();
        Ok(false)
    }

    /// Makes the staged image durable and declares it whole.
    pub fn finish(self) -> std::result::Result<(), StoreError> {
        self.installer.finish()
    }
}

impl Inner {
    /// Leader: streams an image to `caller` over `conn` (its handshake done), on the
    /// connection's own thread.
    pub(super) fn serve_image(self: &Arc<Self>, caller: NodeId, conn: TcpStream) {
        let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
        let mut w = BufWriter::with_capacity(CHUNK + 64, conn);
        let mut buf = Vec::with_capacity(CHUNK + 64);
        let image = match self.export_image() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(to = caller, error = %e, "no image to send");
                ImageFrame::Refused(e.to_string()).encode(&mut buf);
                let _ = w.write_all(&buf).and_then(|()| w.flush());
                return;
            }
        };
        let m = image.manifest().clone();
        tracing::info!(
            to = caller,
            first_index = m.first_index,
            last_index = m.last_index,
            files = m.files.len(),
            bytes = m.data_bytes(),
            "sending an image"
        );
        let started = std::time::Instant::now();
        let sent = (|| -> Result<()> {
            ImageFrame::Manifest(m.encode()).encode(&mut buf);
            w.write_all(&buf)
                .map_err(|e| StoreError::io("image transfer", e))?;
            let mut chunk = vec![0u8; CHUNK];
            for (n, f) in m.files.iter().enumerate() {
                let mut offset = 0;
                while offset < f.data_len {
                    let got = image.read(n, offset, &mut chunk)?;
                    if got == 0 {
                        return Err(StoreError::Config(format!("{} ends early", f.path)).into());
                    }
                    let bytes = &chunk[..got];
                    buf.clear();
                    if bytes.iter().all(|b| *b == 0) {
                        ImageFrame::Zeros {
                            file: n as u32,
                            offset,
                            len: got as u32,
                        }
                    } else {
                        ImageFrame::Data {
                            file: n as u32,
                            offset,
                            bytes: bytes.to_vec(),
                        }
                    }
                    .encode(&mut buf);
                    w.write_all(&buf)
                        .map_err(|e| StoreError::io("image transfer", e))?;
                    offset += got as u64;
                }
            }
            buf.clear();
            ImageFrame::End.encode(&mut buf);
            w.write_all(&buf)
                .and_then(|()| w.flush())
                .map_err(|e| StoreError::io("image transfer", e))?;
            Ok(())
        })();
        match sent {
            Ok(()) => {
                self.images_sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    to = caller,
                    ms = started.elapsed().as_millis() as u64,
                    "image sent"
                )
            }
            Err(e) => tracing::warn!(to = caller, error = %e, "image transfer ended"),
        }
    }

    /// Follower: fetches an image from `leader` on a thread of its own, unless a fetch is
    /// under way or an image is already staged. `diverged`: this node's committed entries are
    /// not the leader's, so it installs the image whatever it holds.
    pub(super) fn start_fetch(self: &Arc<Self>, leader: NodeId, diverged: bool) {
        if self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("image-fetch".into())
            .spawn(move || match inner.fetch_image(leader, diverged) {
                Ok(true) => {
                    tracing::info!(leader, "image staged; restarting on it");
                    inner.restart.send_replace(true);
                }
                Ok(false) => inner.fetching.store(false, Ordering::Release),
                Err(e) => {
                    tracing::warn!(leader, error = %e, "fetching an image failed");
                    inner.fetching.store(false, Ordering::Release);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "image fetch thread not started");
            self.fetching.store(false, Ordering::Release);
        }
    }

    /// Fetches and stages an image of `leader`: true once staged whole, false when it would
    /// not help (this node's log reaches the leader's by now, and has not diverged).
    fn fetch_image(&self, leader: NodeId, diverged: bool) -> Result<bool> {
        let cluster = self
            .config
            .cluster
            .as_ref()
            .ok_or_else(|| StoreError::Config("not in a group".into()))?;
        let status = self
            .raft_status()
            .ok_or_else(|| StoreError::Config("no Raft status yet".into()))?;
        let me = self.config.node_id;
        let addr = crate::raft::driver::peer_addrs(&status.members, me, &cluster.voters)
            .into_iter()
            .find(|(id, _)| *id == leader)
            .map(|(_, a)| a)
            .ok_or_else(|| StoreError::Config(format!("no address for node {leader}")))?;
        let io = |e| StoreError::io(format!("image from node {leader}"), e);
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
        let _ = conn.set_nodelay(true);
        crate::raft::transport::connect_handshake(&mut conn, me, Kind::Image, &cluster.secret)
            .map_err(|e| StoreError::Config(format!("image handshake: {e}")))?;
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut r = BufReader::with_capacity(CHUNK + 64, conn);
        let manifest = match ImageFrame::read(&mut r).map_err(io)? {
            ImageFrame::Manifest(b) => Manifest::decode(&b)
                .ok_or_else(|| StoreError::Config("the image manifest does not verify".into()))?,
            ImageFrame::Refused(why) => {
                return Err(StoreError::Config(format!("the leader refused: {why}")).into());
            }
            other => {
                return Err(StoreError::Config(format!("{other:?} before the manifest")).into());
            }
        };
        let last = self.store.log().last_index();
        let applied = self.applied.load(Ordering::Acquire);
        if diverged {
            tracing::warn!(
                leader,
                applied,
                "this node's committed entries are not the leader's: replacing its state with an \
                 image of the leader"
            );
        } else if !manifest.needed_by(self.store.log(), applied) {
            tracing::info!(
                last,
                applied,
                image_first = manifest.first_index,
                image_dispatched = manifest.dispatched,
                "the offered image is not needed"
            );
            return Ok(false);
        }
        tracing::info!(
            leader,
            first_index = manifest.first_index,
            last_index = manifest.last_index,
            bytes = manifest.data_bytes(),
            "fetching an image"
        );
        let installer = Installer::begin(self.storage.clone(), &self.root, manifest)?;
        let mut receiver = ImageReceiver::new(installer);
        loop {
            let frame = ImageFrame::read(&mut r).map_err(io)?;
            if receiver.accept(frame)? {
                receiver.finish()?;
                return Ok(true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SimDisk, Storage};
    use std::path::PathBuf;

    fn manifest() -> Manifest {
        crate::store::image::test_manifest()
    }

    fn frames(fs: &[ImageFrame]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in fs {
            f.encode(&mut out);
        }
        out
    }

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let all = [
            ImageFrame::Manifest(manifest().encode()),
            ImageFrame::Data {
                file: 0,
                offset: 0,
                bytes: vec![7; 200],
            },
            ImageFrame::Zeros {
                file: 0,
                offset: 200,
                len: 100,
            },
            ImageFrame::End,
            ImageFrame::Refused("no".into()),
        ];
        let bytes = frames(&all);
        let mut r = &bytes[..];
        for f in &all {
            assert_eq!(&ImageFrame::read(&mut r).expect("frame"), f);
        }
        assert!(r.is_empty());
        // A flipped payload byte fails its CRC; a cut frame is an early end.
        let mut bad = frames(&all[1..2]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = ImageFrame::read(&mut &bad[..]).expect_err("crc");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let cut = frames(&all[1..2]);
        let e = ImageFrame::read(&mut &cut[..cut.len() - 1]).expect_err("cut");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // A length past its limit is refused before anything is read for it.
        let mut huge = vec![1u8];
        huge.extend_from_slice(&(MAX_MANIFEST as u32 + 1).to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        let e = ImageFrame::read(&mut &huge[..]).expect_err("limit");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    fn receiver(disk: &SimDisk) -> ImageReceiver {
        let storage: Arc<dyn Storage> = Arc::new(disk.clone());
        let installer =
            Installer::begin(storage, &PathBuf::from("/d"), manifest()).expect("staging");
        ImageReceiver::new(installer)
    }

    #[test]
    fn the_receiver_takes_each_files_bytes_once_in_order_and_nothing_else() {
        let disk = SimDisk::new();
        let data = |file, offset, n| ImageFrame::Data {
            file,
            offset,
            bytes: vec![9; n],
        };
        // Out of place: another file first, a gap, past the file, an early end, a second
        // manifest.
        for wrong in [
            data(2, 0, 4),
            data(0, 10, 10),
            ImageFrame::Zeros {
                file: 0,
                offset: 0,
                len: 301,
            },
            data(0, 0, 301),
            ImageFrame::End,
            ImageFrame::Manifest(manifest().encode()),
        ] {
            let mut r = receiver(&disk);
            assert!(r.accept(wrong.clone()).is_err(), "{wrong:?}");
        }
        let mut r = receiver(&disk);
        assert_eq!(r.accept(data(0, 0, 100)).ok(), Some(false));
        assert!(r.accept(data(0, 0, 100)).is_err(), "a repeat");
        let mut r = receiver(&disk);
        for f in [
            data(0, 0, 100),
            ImageFrame::Zeros {
                file: 0,
                offset: 100,
                len: 200,
            },
            // File 1 ships nothing: straight to file 2.
            data(2, 0, 4),
        ] {
            assert_eq!(r.accept(f).ok(), Some(false));
        }
        assert_eq!(r.accept(ImageFrame::End).ok(), Some(true));
        r.finish().expect("finish");
        assert!(disk.exists(&PathBuf::from("/d/install/manifest")));
    }
}
