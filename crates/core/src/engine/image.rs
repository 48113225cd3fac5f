//! Images of a node's data directory for a follower the retained log no longer reaches: the
//! store's image ([`crate::store::image`]) up to the applied index plus the engine snapshot and
//! journal its dispatch point needs, read while checkpoint cycles (and so segment removals) are
//! paused, and their local installation (staged, then moved into place by the next
//! `Engine::open`).
//!
//! It owns the pause for as long as an image is out. It must never hand out bytes once the
//! engine has begun to close: close writes a checkpoint the image does not describe.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Engine, EngineError, Inner, Result};
use crate::raft::ConfigAt;
use crate::raft::members_file::{self, MEMBERS_FILE};
use crate::store::image::{Installer, Manifest, StoreImage};
use crate::store::{LogIndex, Storage};

/// How long an export waits for a checkpoint cycle in flight to end.
const CYCLE_WAIT: Duration = Duration::from_secs(30);
/// How long an export waits for the last committed configuration to be applied.
const CONFIG_WAIT: Duration = Duration::from_secs(2);
/// Bytes copied at a time by a local install.
const COPY_CHUNK: usize = 1 << 20;

/// An image of a live node, readable until dropped; checkpoint cycles stay paused meanwhile.
#[derive(Debug)]
pub struct EngineImage {
    inner: Arc<Inner>,
    store: StoreImage,
}

impl Drop for EngineImage {
    fn drop(&mut self) {
        self.inner.exports.end_export();
    }
}

impl EngineImage {
    /// What it holds.
    pub fn manifest(&self) -> &Manifest {
        self.store.manifest()
    }

    /// Reads file `file` of the manifest from `offset`: the bytes read, fewer only at the end
    /// of what the file ships.
    pub fn read(&self, file: usize, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if self.inner.exports.closing() {
            return Err(EngineError::ShuttingDown);
        }
        Ok(self.store.read(file, offset, buf)?)
    }

    /// Writes the whole image into the data directory `root` of `storage`, staged: the next
    /// `Engine::open` there installs it in place of what the directory holds of its store and
    /// engine (its identity, hard state and clock bound stay). Nothing may have it open.
    pub fn install_into(&self, storage: Arc<dyn Storage>, root: &Path) -> Result<()> {
        let mut installer = Installer::begin(storage, root, self.manifest().clone())?;
        let mut buf = vec![0u8; COPY_CHUNK];
        for (n, f) in self.manifest().files.iter().enumerate() {
            let mut offset = 0;
            while offset < f.data_len {
                let got = self.read(n, offset, &mut buf)?;
                if got == 0 {
                    break;
                }
                installer.write(n, offset, &buf[..got])?;
                offset += got as u64;
            }
        }
        Ok(installer.finish()?)
    }
}

impl Engine {
    /// An image of this node as of its applied index: the log from its first retained entry
    /// to there, the store's derived state and the engine state at the durable dispatch
    /// checkpoint, and in a group the configurations that log holds. Waits for a checkpoint
    /// cycle in flight to end; none starts until the image is dropped.
    pub fn export_image(&self) -> Result<EngineImage> {
        self.inner.export_image()
    }
}

impl Inner {
    pub(super) fn export_image(self: &Arc<Self>) -> Result<EngineImage> {
        let inner = self;
        if !inner.exports.begin_export(CYCLE_WAIT) {
            return Err(EngineError::ShuttingDown);
        }
        // From here the pause is the image's to end, also when making it fails.
        let mut image = EngineImage {
            inner: inner.clone(),
            store: StoreImage::empty(inner.storage.clone()),
        };
        let (applied, configs) = self.applied_with_configs()?;
        image.store = inner.store.image(applied)?;
        if let Some(configs) = configs {
            image
                .store
                .push_bytes(MEMBERS_FILE.into(), members_file::encode(&configs));
        }
        super::replica::push_snapshot_files(inner.storage.as_ref(), &inner.root, &mut image.store)?;
        Ok(image)
    }

    /// The applied index an image goes up to and, in a group, the configurations of the log
    /// up to there: the `members` file's, those past it left out. The file begins with the
    /// last configuration committed when it was written; should that one not be applied yet,
    /// this waits (briefly) until it is, or the image would have no configuration at all.
    fn applied_with_configs(&self) -> Result<(LogIndex, Option<Vec<ConfigAt>>)> {
        let started = Instant::now();
        loop {
            let applied = self.applied.load(Ordering::Acquire);
            if self.config.cluster.is_none() {
                return Ok((applied, None));
            }
            let configs = members_file::load(self.storage.as_ref(), &self.root)?;
            if configs.first().is_none_or(|c| c.index <= applied) || started.elapsed() > CONFIG_WAIT
            {
                let held = configs.into_iter().filter(|c| c.index <= applied).collect();
                return Ok((applied, Some(held)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
