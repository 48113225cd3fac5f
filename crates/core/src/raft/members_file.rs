//! The `members` file: the configurations the log holds (the last committed one and every
//! later one, each with its entry's index and term), written durably before the entries that
//! carry them, so a restart knows who is in the group without reading the log. The driver's
//! half: IO, no decisions (`Raft::restore_configs` keeps what the log still holds).
//!
//! ```text
//! file   = magic:"MFMB" count:u32 count × (index:u64 term:u64 len:u32 membership:len) crc:u32
//! ```
//! `membership` as a Config entry's command (`membership.rs`); crc = CRC32C of everything
//! before it.

use std::path::Path;

use crate::store::StoreError;
use crate::store::storage::{Storage, read_all, write_atomic};

use super::membership::{ConfigAt, Membership};

/// File name under the data directory.
pub const MEMBERS_FILE: &str = "members";
const MAGIC: &[u8; 4] = b"MFMB";

/// Writes `configs` durably (temp file, fsync, rename, directory fsync).
pub fn save(storage: &dyn Storage, root: &Path, configs: &[ConfigAt]) -> Result<(), StoreError> {
    let path = root.join(MEMBERS_FILE);
    write_atomic(storage, &path, &encode(configs)).map_err(|e| StoreError::io(&path, e))
}

/// The file's bytes for `configs`.
pub fn encode(configs: &[ConfigAt]) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(configs.len() as u32).to_le_bytes());
    for c in configs {
        let m = c.members.encode();
        b.extend_from_slice(&c.index.to_le_bytes());
        b.extend_from_slice(&c.term.to_le_bytes());
        b.extend_from_slice(&(m.len() as u32).to_le_bytes());
        b.extend_from_slice(&m);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The configurations saved, none when there is no file; `Corruption` when it does not
/// verify.
pub fn load(storage: &dyn Storage, root: &Path) -> Result<Vec<ConfigAt>, StoreError> {
    let path = root.join(MEMBERS_FILE);
    if !storage.exists(&path) {
        return Ok(Vec::new());
    }
    let b = read_all(storage, &path).map_err(|e| StoreError::io(&path, e))?;
    let corrupt = || StoreError::Corruption {
        file: path.clone(),
        offset: 0,
        reason: "members file does not verify".into(),
    };
    if b.len() < 12 || &b[..4] != MAGIC {
        return Err(corrupt());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return Err(corrupt());
    }
    let mut at = 8;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let part = body.get(at..at + n).ok_or_else(corrupt)?;
        at += n;
        Ok(part)
    };
    let u64_at = |b: &[u8]| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_le_bytes(a)
    };
    let count = u32::from_le_bytes([body[4], body[5], body[6], body[7]]) as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let index = u64_at(take(8)?);
        let term = u64_at(take(8)?);
        let len = take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let members = Membership::decode(take(len)?).ok_or_else(corrupt)?;
        out.push(ConfigAt {
            index,
            term,
            members,
        });
    }
    if at != body.len() {
        return Err(corrupt());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::membership::{Member, MemberRole};
    use crate::store::simdisk::SimDisk;

    #[test]
    fn configurations_round_trip_and_a_damaged_file_is_refused() {
        let disk = SimDisk::new();
        let root = Path::new("/d");
        disk.create_dir_all(root).expect("dir");
        assert_eq!(load(&disk, root).expect("no file"), Vec::new());
        let members = Membership::new(vec![Member {
            id: 2,
            incarnation: 9,
            role: MemberRole::Learner { promote: true },
            addr: "127.0.0.1:7002".into(),
        }]);
        let configs = vec![
            ConfigAt {
                index: 1,
                term: 1,
                members: members.clone(),
            },
            ConfigAt {
                index: 7,
                term: 3,
                members,
            },
        ];
        save(&disk, root, &configs).expect("saved");
        assert_eq!(load(&disk, root).expect("loads"), configs);
        let path = root.join(MEMBERS_FILE);
        let good = read_all(&disk, &path).expect("read");
        for damaged in [
            good[..good.len() - 1].to_vec(),
            {
                let mut b = good.clone();
                b[10] ^= 1;
                b
            },
            b"MFMB".to_vec(),
        ] {
            write_atomic(&disk, &path, &damaged).expect("written");
            assert!(matches!(
                load(&disk, root),
                Err(StoreError::Corruption { .. })
            ));
        }
    }
}
