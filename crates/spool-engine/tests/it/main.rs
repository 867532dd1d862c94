//! Integration tests of the engine through its public API (one binary, as rust-analyzer does).

mod blobs;
mod checkpoint;
mod corruption;
mod queue;
mod recovery;
mod segments;
mod topic;

use std::sync::Arc;

use spool_engine::vfs::MemVfs;
use spool_engine::{ManualClock, Options, Store};

/// A store on an in-memory file system with a manual clock, reopenable.
pub struct Env {
    pub vfs: Arc<MemVfs>,
    pub clock: ManualClock,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Self {
        Self {
            vfs: Arc::new(MemVfs::new()),
            clock: ManualClock::new(1_700_000_000_000),
        }
    }
    pub fn options(&self) -> Options {
        Options {
            clock: Arc::new(self.clock.clone()),
            ..Options::default()
        }
    }
    pub fn open(&self) -> Store {
        self.open_with(self.options())
    }
    pub fn open_with(&self, options: Options) -> Store {
        Store::open_with_vfs(self.vfs.clone(), "/s", options).expect("open")
    }
}
