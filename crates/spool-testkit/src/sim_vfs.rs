//! `SimVfs`: a deterministic, in-memory simulation of a Linux file system with a volatile page
//! cache, for crash testing the engine through its [`Vfs`] seam.
//!
//! # The crash model
//!
//! Every file is an inode (an id) with two images: the **durable** bytes (what is on the platter)
//! and the ordered list of **pending** operations (`write_all_at`, `set_len`) issued since the
//! last successful `sync_data` of that inode. Reads see the **live** view: durable bytes with
//! every pending operation applied, exactly as a process sees its own page cache.
//!
//! Names are separate from inodes. Creating a file, `rename`, `remove_file` and
//! `create_dir_all` change the live namespace at once but only append a **pending namespace
//! operation** to the directory they touch; `sync_dir(dir)` makes that directory's pending
//! operations durable. So a file whose data was `sync_data`'d but whose directory was never
//! fsynced is *gone* after a power cut (the ClickHouse bug class), and a rename that was not
//! followed by a directory fsync may revert.
//!
//! [`SimVfs::crash_image`] builds the file system as it could look after a power loss at this
//! instant, as a brand-new `SimVfs` (no pending operations, no locks, no fault injection):
//!
//! - Everything durable survives: synced data of files whose names are durable, and durable
//!   directory entries whose parent directories are durable too.
//! - **File data**: each pending operation of each file is independently kept or lost. Any
//!   subset, not only a prefix: the kernel writes dirty pages back in whatever order it likes
//!   (and the disk's cache reorders again), so a later append can reach the platter while an
//!   earlier one does not. A kept write that spans several sectors may be **torn**: only a
//!   prefix of it, cut at a sector boundary (512 bytes by default; sectors are the unit the
//!   disk writes atomically), reached the disk; the rest of its range holds the old content,
//!   zeros, or garbage (chosen at random; zeros and garbage extend the file to the end of the
//!   write, as when the size update reached the journal but the data did not).
//! - **Directory entries**: per directory, a random *prefix* of its pending operations is kept.
//!   ext4 and xfs log namespace changes in their journal in the order they happened, so a later
//!   rename cannot survive while an earlier create in the same directory is lost. Entries whose
//!   parent directory did not survive are gone with it.
//!
//! The choice is made by a [`CrashModel`]: [`CrashModel::power_loss`] (the default, random as
//! above), [`CrashModel::process_kill`] (a `kill -9`: the kernel survives, so every pending
//! operation survives) and [`CrashModel::lose_all_pending`] (only what was synced).
//!
//! # Crashes in the middle of a run, and faults
//!
//! Every mutating call (`write_all_at`, `set_len`, `sync_data`, `sync_dir`, `open` with
//! `Create`/`CreateNew`, even of an existing file, `rename`, `remove_file`, `create_dir_all`)
//! gets a number, from 1, in the order the calls are made, whether it then succeeds or fails;
//! [`SimVfs::op_count`] says how many there were. Reads, `len`, `read_dir`, `exists` and `lock`
//! are not numbered. A test runs a
//! workload once to count its operations, then reruns it with [`SimVfs::set_crash_at`]: when
//! operation `n` starts, the crash image is taken (before the operation takes effect; with the
//! power-loss model an interrupted write is treated as one more pending write, so it may be lost,
//! kept or torn) and from then on every call on this `SimVfs` and on its open files fails with a
//! "simulated power loss" error (see [`is_power_loss`]): the machine is dead. The image is
//! fetched with [`SimVfs::take_crash_image`].
//!
//! [`SimVfs::fail_op`] fails one numbered operation with EIO or ENOSPC and the machine lives on;
//! [`SimVfs::fail_sync_once`] fails the next `sync_data`; [`SimVfs::set_space_limit`] makes
//! writes that would grow the file system beyond a size fail with ENOSPC.
//!
//! **fsyncgate**: when a `sync_data` fails, however the failure was injected, the pending
//! operations of that file are dropped from durability, as Linux marks the dirty pages clean
//! after a failed writeback: they stay visible to reads (the page cache still holds them) but no
//! later `sync_data` makes them durable and no crash image contains them. Only operations issued
//! after the failure can still become durable. An engine that retries the fsync and believes its
//! data is safe is caught by this.
//!
//! # Determinism
//!
//! The same sequence of calls and the same seed give the same image, bit for bit. Randomness
//! comes from a hand-written [`SplitMix64`], not from `rand`, so images do not change when the
//! `rand` crate changes its algorithms between versions (a recorded failing seed must replay
//! forever). Each file and each directory draws from its own stream derived from the seed and
//! the inode id or the directory path, so the choices for one file do not shift when another
//! file gets one more pending write.
//!
//! # Simplifications
//!
//! - Renaming directories is not supported (the engine renames files only).
//! - A rename across directories is recorded as a new entry in the target directory and a
//!   removal in the source directory, each durable with its own directory's sync. A crash may
//!   then show the file under both names or under neither, which is weaker than ext4 gives; the
//!   engine should rename within one directory.
//! - A file's size travels with its data operations (there is no separate inode-size journal).
//! - `lock` is an in-process lock table (like `MemVfs`): no `LOCK` file appears in the
//!   namespace.
//! - Space accounting counts the live bytes of files that have a live name; unlinked files
//!   still held open do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use spool_engine::vfs::{LockError, OpenMode, Vfs, VfsFile, VfsLock};

/// The sector size torn writes are cut at unless a [`CrashModel`] says otherwise: the logical
/// sector of nearly every disk, the largest unit a disk promises to write atomically.
pub const DEFAULT_SECTOR_BYTES: u64 = 512;

/// The largest simulated file. Files live in memory; a bug that writes at a huge offset should
/// fail with `EFBIG` instead of aborting the test run by exhausting memory. Segments are tens of
/// MiB, so 4 GiB leaves ample room.
pub const MAX_FILE_BYTES: u64 = 1 << 32;

/// A pending file operation survives a random power-loss image with probability
/// `KEEP_NUMERATOR / KEEP_DENOMINATOR`. One half gives every subset of a few operations a fair
/// chance within a few hundred seeds.
const KEEP_NUMERATOR: u64 = 1;
const KEEP_DENOMINATOR: u64 = 2;

/// A kept write spanning more than one sector is torn with probability
/// `TORN_NUMERATOR / TORN_DENOMINATOR`: often enough that every torn shape shows up in a few
/// hundred seeds, rarely enough that most images still contain whole writes.
const TORN_NUMERATOR: u64 = 1;
const TORN_DENOMINATOR: u64 = 3;

/// Linux errno values used for injected errors (no libc dependency for four numbers).
const EIO: i32 = 5;
const EBADF: i32 = 9;
const EFBIG: i32 = 27;
const ENOSPC: i32 = 28;

// ---------------------------------------------------------------------------------------------
// Public knobs.

/// What happens to operations that were not yet durable when the machine went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingPolicy {
    /// Every pending operation survives: a process kill (`kill -9`), where the kernel and its
    /// page cache live on.
    KeepAll,
    /// No pending operation survives: only what was synced.
    LoseAll,
    /// A power loss: each pending file operation is kept or lost independently (and may be
    /// torn), each directory keeps a random prefix of its pending operations.
    RandomSubset,
}

/// How a crash image is built from the pending state. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashModel {
    /// What happens to pending operations.
    pub pending: PendingPolicy,
    /// Whether kept writes may be torn (only with [`PendingPolicy::RandomSubset`]).
    pub torn_writes: bool,
    /// The unit a torn write is cut at; must be at least 1. Default 512; 4096 models a disk
    /// with 4 KiB atomic pages.
    pub sector_bytes: u64,
}

impl Default for CrashModel {
    fn default() -> Self {
        Self::power_loss()
    }
}

impl CrashModel {
    /// A power loss: any subset of pending file writes survives, possibly torn at 512-byte
    /// sectors; each directory keeps a prefix of its pending entries. The default.
    pub const fn power_loss() -> Self {
        Self {
            pending: PendingPolicy::RandomSubset,
            torn_writes: true,
            sector_bytes: DEFAULT_SECTOR_BYTES,
        }
    }

    /// A process kill (`kill -9`): everything the process handed to the kernel survives.
    pub const fn process_kill() -> Self {
        Self {
            pending: PendingPolicy::KeepAll,
            torn_writes: false,
            sector_bytes: DEFAULT_SECTOR_BYTES,
        }
    }

    /// The harshest power loss: nothing that was not synced survives.
    pub const fn lose_all_pending() -> Self {
        Self {
            pending: PendingPolicy::LoseAll,
            torn_writes: false,
            sector_bytes: DEFAULT_SECTOR_BYTES,
        }
    }

    /// The same model with torn writes switched on or off.
    #[must_use]
    pub const fn with_torn_writes(mut self, torn_writes: bool) -> Self {
        self.torn_writes = torn_writes;
        self
    }

    /// The same model with another sector size for torn writes.
    #[must_use]
    pub fn with_sector_bytes(mut self, sector_bytes: u64) -> Self {
        assert!(sector_bytes > 0, "sector_bytes must be at least 1");
        self.sector_bytes = sector_bytes;
        self
    }
}

/// An error to inject into one operation with [`SimVfs::fail_op`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `EIO` (raw OS error 5): the device reported an error.
    Eio,
    /// `ENOSPC` (raw OS error 28, `io::ErrorKind::StorageFull`): the device is full.
    Enospc,
}

impl Fault {
    /// The error an operation failed by this fault returns.
    pub fn to_error(self) -> io::Error {
        match self {
            Fault::Eio => io::Error::from_raw_os_error(EIO),
            Fault::Enospc => io::Error::from_raw_os_error(ENOSPC),
        }
    }
}

/// Counters of what happened on a [`SimVfs`] (not carried over into crash images).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Mutating operations started, the same number as [`SimVfs::op_count`].
    pub ops: u64,
    /// Successful `write_all_at` calls.
    pub writes: u64,
    /// Bytes written by successful `write_all_at` calls.
    pub bytes_written: u64,
    /// Successful `sync_data` calls.
    pub data_syncs: u64,
    /// Successful `sync_dir` calls.
    pub dir_syncs: u64,
    /// Operations failed by injected faults or the space limit.
    pub failed_ops: u64,
}

/// The marker inside the error every call returns once the simulated machine lost power.
#[derive(Debug)]
struct PowerLoss;

impl fmt::Display for PowerLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("simulated power loss")
    }
}

impl std::error::Error for PowerLoss {}

fn power_loss() -> io::Error {
    io::Error::other(PowerLoss)
}

/// Whether `err` is the error a [`SimVfs`] returns after its simulated power loss (as opposed
/// to an injected fault, which the machine survives).
pub fn is_power_loss(err: &io::Error) -> bool {
    matches!(err.get_ref(), Some(inner) if inner.is::<PowerLoss>())
}

// ---------------------------------------------------------------------------------------------
// Randomness.

/// SplitMix64 (Steele, Lea and Flood, 2014): a tiny, fast generator with good statistical
/// quality for simulation. Hand-written so that crash images depend only on this file: a seed
/// printed by a failing test today replays the same image after any dependency upgrade.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` must be at least 1). Uses the multiply-high reduction; its bias
    /// is below 2^-32 for the small ranges a simulation draws from.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below needs a non-empty range");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Separates the random streams of files from those of directories.
const FILE_STREAM: u64 = 0x66_696C_6573; // "files"
const DIR_STREAM: u64 = 0x64_6972_7300; // "dirs"

/// An independent stream for one object (`salt`) of one crash image (`seed`).
fn stream(seed: u64, domain: u64, salt: u64) -> SplitMix64 {
    let mut outer = SplitMix64::new(seed ^ domain);
    let base = outer.next_u64();
    let mut inner = SplitMix64::new(base ^ salt.wrapping_mul(0xA24B_AED4_963E_E407));
    SplitMix64::new(inner.next_u64())
}

/// FNV-1a of a path's bytes: a hash that, unlike `DefaultHasher`, is fixed forever.
fn path_hash(path: &Path) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// State.

type Ino = u64;

/// What a name points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(Ino),
    Dir,
}

/// A not-yet-durable change to one file's content.
#[derive(Debug, Clone)]
enum FileOp {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl FileOp {
    fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            FileOp::Write { offset, data } => {
                let end = offset + data.len();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[*offset..end].copy_from_slice(data);
            }
            FileOp::SetLen(len) => buf.resize(*len, 0),
        }
    }
}

/// A not-yet-durable change to one directory's entries.
#[derive(Debug, Clone)]
enum NsOp {
    /// A name now points to a file (a creation, or the target side of a cross-directory rename).
    Link { path: PathBuf, ino: Ino },
    /// A name is gone (a removal, or the source side of a cross-directory rename).
    Unlink { path: PathBuf },
    /// A rename within the directory: atomic, replaces the target.
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: Ino,
    },
    /// A subdirectory was created.
    Mkdir { path: PathBuf },
}

impl NsOp {
    fn apply(&self, ns: &mut BTreeMap<PathBuf, Node>) {
        match self {
            NsOp::Link { path, ino } => {
                ns.insert(path.clone(), Node::File(*ino));
            }
            NsOp::Unlink { path } => {
                ns.remove(path);
            }
            NsOp::Rename { from, to, ino } => {
                ns.remove(from);
                ns.insert(to.clone(), Node::File(*ino));
            }
            NsOp::Mkdir { path } => {
                ns.insert(path.clone(), Node::Dir);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    /// What survives any crash.
    durable: Vec<u8>,
    /// What reads see.
    live: Vec<u8>,
    /// Changes since the last successful `sync_data`, in issue order.
    pending: Vec<FileOp>,
}

impl Inode {
    fn with_content(bytes: Vec<u8>) -> Self {
        Self {
            durable: bytes.clone(),
            live: bytes,
            pending: Vec::new(),
        }
    }

    /// This file's content in a crash image.
    fn crash_content(
        &self,
        ino: Ino,
        seed: u64,
        model: &CrashModel,
        in_flight: Option<&FileOp>,
    ) -> Vec<u8> {
        let mut data = self.durable.clone();
        let ops = self.pending.iter().chain(in_flight);
        match model.pending {
            PendingPolicy::KeepAll => ops.for_each(|op| op.apply(&mut data)),
            PendingPolicy::LoseAll => {}
            PendingPolicy::RandomSubset => {
                let mut rng = stream(seed, FILE_STREAM, ino);
                for op in ops {
                    if !rng.chance(KEEP_NUMERATOR, KEEP_DENOMINATOR) {
                        continue;
                    }
                    match op {
                        FileOp::Write {
                            offset,
                            data: bytes,
                        } if model.torn_writes => {
                            write_maybe_torn(
                                &mut data,
                                *offset,
                                bytes,
                                model.sector_bytes,
                                &mut rng,
                            );
                        }
                        _ => op.apply(&mut data),
                    }
                }
            }
        }
        data
    }
}

/// What a torn write leaves after the part that reached the disk.
#[derive(Debug, Clone, Copy)]
enum TornRest {
    Old,
    Zeros,
    Garbage,
}

/// Applies a kept write, tearing it at a sector boundary with probability `TORN_*`.
fn write_maybe_torn(
    buf: &mut Vec<u8>,
    offset: usize,
    bytes: &[u8],
    sector_bytes: u64,
    rng: &mut SplitMix64,
) {
    let sector = usize::try_from(sector_bytes.max(1)).unwrap_or(usize::MAX);
    let end = offset + bytes.len();
    // Sector boundaries strictly inside the write. The sector holding `offset` is written whole
    // or not at all, so the cut points are `offset` itself and these boundaries.
    let first = (offset / sector).saturating_add(1).saturating_mul(sector);
    let inner = if first < end {
        (end - first).div_ceil(sector)
    } else {
        0
    };
    if inner == 0 || !rng.chance(TORN_NUMERATOR, TORN_DENOMINATOR) {
        FileOp::Write {
            offset,
            data: bytes.to_vec(),
        }
        .apply(buf);
        return;
    }
    let pick = rng.below(inner as u64 + 1) as usize;
    let cut = if pick == 0 {
        offset
    } else {
        first + (pick - 1) * sector
    };
    let rest = match rng.below(3) {
        0 => TornRest::Old,
        1 => TornRest::Zeros,
        _ => TornRest::Garbage,
    };
    if cut > offset {
        if buf.len() < cut {
            buf.resize(cut, 0);
        }
        buf[offset..cut].copy_from_slice(&bytes[..cut - offset]);
    }
    match rest {
        TornRest::Old => {}
        TornRest::Zeros | TornRest::Garbage => {
            if buf.len() < end {
                buf.resize(end, 0);
            }
            if let TornRest::Garbage = rest {
                rng.fill(&mut buf[cut..end]);
            } else {
                buf[cut..end].fill(0);
            }
        }
    }
}

/// A crash scheduled by [`SimVfs::set_crash_at`].
#[derive(Debug, Clone, Copy)]
struct CrashPoint {
    at: u64,
    seed: u64,
}

/// Why a mutating operation may not proceed.
enum Refused {
    /// The machine is dead (or died at this very operation).
    Dead(io::Error),
    /// An injected fault; the machine lives on.
    Fault(io::Error),
}

impl From<Refused> for io::Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Dead(e) | Refused::Fault(e) => e,
        }
    }
}

#[derive(Default)]
struct Fs {
    inodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    /// The namespace reads see. Roots (`/`, the empty path) are implicit directories.
    live: BTreeMap<PathBuf, Node>,
    /// The namespace as of the last `sync_dir` of each directory.
    durable: BTreeMap<PathBuf, Node>,
    /// Namespace changes not yet made durable, per directory, in issue order.
    pending_dirs: BTreeMap<PathBuf, Vec<NsOp>>,
    locks: BTreeSet<PathBuf>,
    model: CrashModel,
    crash_at: Option<CrashPoint>,
    crash_image: Option<SimVfs>,
    dead: bool,
    faults: BTreeMap<u64, Fault>,
    fail_next_sync: bool,
    space_limit: Option<u64>,
    stats: SimStats,
}

impl fmt::Debug for Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Contents are left out on purpose: a segment's bytes in a test failure message help
        // nobody.
        f.debug_struct("Fs")
            .field("names", &self.live.len())
            .field("inodes", &self.inodes.len())
            .field(
                "pending_dir_ops",
                &self.pending_dirs.values().map(Vec::len).sum::<usize>(),
            )
            .field(
                "pending_file_ops",
                &self.inodes.values().map(|i| i.pending.len()).sum::<usize>(),
            )
            .field("model", &self.model)
            .field("crash_at", &self.crash_at)
            .field("dead", &self.dead)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn lock_poison_free<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock (a failed assertion in a test thread) cannot leave the
    // simulated state half-updated in a way later calls could misread, so take it over.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The path with redundant separators and `.` components removed, so that `/a/b/` and `/a/./b`
/// name the same entry (and hash to the same directory stream).
fn norm(path: &Path) -> PathBuf {
    path.components().collect()
}

fn is_root(path: &Path) -> bool {
    path.parent().is_none() || path.as_os_str().is_empty()
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn not_a_directory(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotADirectory,
        format!("{}: not a directory", path.display()),
    )
}

fn is_a_directory(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::IsADirectory,
        format!("{}: is a directory", path.display()),
    )
}

/// Checks a write's range and copies it into a pending operation.
fn write_op(buf: &[u8], offset: u64) -> io::Result<FileOp> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|end| *end <= MAX_FILE_BYTES)
        .ok_or_else(|| io::Error::from_raw_os_error(EFBIG))?;
    let (Ok(offset), Ok(_)) = (usize::try_from(offset), usize::try_from(end)) else {
        return Err(io::Error::from_raw_os_error(EFBIG));
    };
    Ok(FileOp::Write {
        offset,
        data: buf.to_vec(),
    })
}

impl Fs {
    fn check_alive(&self) -> io::Result<()> {
        if self.dead {
            Err(power_loss())
        } else {
            Ok(())
        }
    }

    /// Numbers a mutating operation and applies a scheduled crash or fault to it. `in_flight` is
    /// the write this operation is about to make, which a crash image may contain torn.
    fn begin_op(&mut self, in_flight: Option<(Ino, &FileOp)>) -> Result<(), Refused> {
        self.check_alive().map_err(Refused::Dead)?;
        self.stats.ops += 1;
        let n = self.stats.ops;
        if let Some(point) = self.crash_at.filter(|p| p.at == n) {
            let model = self.model;
            // Only a power loss can leave a write half done; a killed process's write either
            // happened or did not, and we say it did not.
            let in_flight = in_flight.filter(|_| model.pending == PendingPolicy::RandomSubset);
            let image = self.image(point.seed, &model, in_flight);
            self.crash_image = Some(SimVfs::from_fs(image));
            self.crash_at = None;
            self.dead = true;
            return Err(Refused::Dead(power_loss()));
        }
        if let Some(fault) = self.faults.remove(&n) {
            self.stats.failed_ops += 1;
            return Err(Refused::Fault(fault.to_error()));
        }
        Ok(())
    }

    fn node(&self, path: &Path) -> Option<Node> {
        if is_root(path) {
            Some(Node::Dir)
        } else {
            self.live.get(path).copied()
        }
    }

    /// The parent of `path`, which must be a live directory.
    fn parent_dir(&self, path: &Path) -> io::Result<PathBuf> {
        let Some(parent) = path.parent() else {
            return Err(is_a_directory(path));
        };
        match self.node(parent) {
            Some(Node::Dir) => Ok(parent.to_path_buf()),
            Some(Node::File(_)) => Err(not_a_directory(parent)),
            None => Err(not_found(parent)),
        }
    }

    fn push_ns(&mut self, dir: PathBuf, op: NsOp) {
        self.pending_dirs.entry(dir).or_default().push(op);
    }

    fn inode_mut(&mut self, ino: Ino) -> io::Result<&mut Inode> {
        // Inodes are never removed from the table, so this cannot fail unless the simulator
        // itself is broken; say so rather than panic inside the engine under test.
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other(format!("simulator bug: inode {ino} missing")))
    }

    fn inode(&self, ino: Ino) -> io::Result<&Inode> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| io::Error::other(format!("simulator bug: inode {ino} missing")))
    }

    fn alloc_inode(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        ino
    }

    /// Live bytes of every file that has a live name (each inode once).
    fn live_bytes(&self) -> u64 {
        let inos: BTreeSet<Ino> = self
            .live
            .values()
            .filter_map(|n| match n {
                Node::File(ino) => Some(*ino),
                Node::Dir => None,
            })
            .collect();
        inos.iter()
            .filter_map(|ino| self.inodes.get(ino))
            .map(|i| i.live.len() as u64)
            .sum()
    }

    /// Makes a pending-op-free copy of the file system as a crash at this instant could leave
    /// it. `in_flight` is a write in progress, treated as one more pending write of its file.
    fn image(&self, seed: u64, model: &CrashModel, in_flight: Option<(Ino, &FileOp)>) -> Fs {
        let mut ns = self.durable.clone();
        for (dir, ops) in &self.pending_dirs {
            let keep = match model.pending {
                PendingPolicy::KeepAll => ops.len(),
                PendingPolicy::LoseAll => 0,
                PendingPolicy::RandomSubset => {
                    let mut rng = stream(seed, DIR_STREAM, path_hash(dir));
                    rng.below(ops.len() as u64 + 1) as usize
                }
            };
            for op in &ops[..keep] {
                op.apply(&mut ns);
            }
        }
        let ns = reachable(ns);
        let mut inodes = BTreeMap::new();
        for node in ns.values() {
            let Node::File(ino) = *node else { continue };
            if inodes.contains_key(&ino) {
                continue;
            }
            let Some(inode) = self.inodes.get(&ino) else {
                continue;
            };
            let flight = in_flight.filter(|(i, _)| *i == ino).map(|(_, op)| op);
            let data = inode.crash_content(ino, seed, model, flight);
            inodes.insert(ino, Inode::with_content(data));
        }
        Fs {
            inodes,
            next_ino: self.next_ino,
            live: ns.clone(),
            durable: ns,
            model: self.model,
            ..Fs::default()
        }
    }
}

/// Drops entries whose parent directory is not in `ns` (what a crash does to the children of a
/// directory whose own entry never became durable).
fn reachable(ns: BTreeMap<PathBuf, Node>) -> BTreeMap<PathBuf, Node> {
    let mut out: BTreeMap<PathBuf, Node> = BTreeMap::new();
    // Paths order component by component, so a parent always comes before its children.
    for (path, node) in ns {
        let parent_ok = path
            .parent()
            .is_none_or(|p| is_root(p) || out.get(p) == Some(&Node::Dir));
        if parent_ok {
            out.insert(path, node);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The simulated file system.

/// A simulated crashing file system. Cheap to clone; clones share the same state. See the
/// module documentation for the crash model.
#[derive(Debug, Clone, Default)]
pub struct SimVfs {
    inner: Arc<Mutex<Fs>>,
}

impl SimVfs {
    /// An empty file system (only the roots `/` and the empty path exist) with the default
    /// [`CrashModel::power_loss`].
    pub fn new() -> Self {
        Self::default()
    }

    fn from_fs(fs: Fs) -> Self {
        Self {
            inner: Arc::new(Mutex::new(fs)),
        }
    }

    fn fs(&self) -> MutexGuard<'_, Fs> {
        lock_poison_free(&self.inner)
    }

    /// Sets the model that [`SimVfs::crash_image`] and [`SimVfs::set_crash_at`] use. It is
    /// carried over into crash images.
    pub fn set_crash_model(&self, model: CrashModel) {
        self.fs().model = model;
    }

    /// The current crash model.
    pub fn crash_model(&self) -> CrashModel {
        self.fs().model
    }

    /// The file system after a crash at this instant, under the current crash model, as a new
    /// `SimVfs`. This one is not changed. Also works on a dead `SimVfs`, which gives other
    /// images of the same crash point (without the write that was in flight).
    #[must_use]
    pub fn crash_image(&self, seed: u64) -> SimVfs {
        let fs = self.fs();
        let model = fs.model;
        SimVfs::from_fs(fs.image(seed, &model, None))
    }

    /// Like [`SimVfs::crash_image`] with an explicit model.
    #[must_use]
    pub fn crash_image_with(&self, seed: u64, model: &CrashModel) -> SimVfs {
        SimVfs::from_fs(self.fs().image(seed, model, None))
    }

    /// Schedules a power loss at mutating operation number `n` (counted from 1 since this
    /// `SimVfs` was made; see [`SimVfs::op_count`]). When operation `n` starts, its crash image
    /// (seeded by `seed`) is stored for [`SimVfs::take_crash_image`] and every later call fails.
    /// A number already passed never fires. Replaces an earlier schedule.
    pub fn set_crash_at(&self, n: u64, seed: u64) {
        self.fs().crash_at = Some(CrashPoint { at: n, seed });
    }

    /// The image captured by a scheduled crash, once (`None` before the crash or when taken).
    pub fn take_crash_image(&self) -> Option<SimVfs> {
        self.fs().crash_image.take()
    }

    /// Whether the simulated machine has lost power.
    pub fn is_crashed(&self) -> bool {
        self.fs().dead
    }

    /// How many mutating operations were started so far (failed ones included). The next one
    /// is number `op_count() + 1`.
    pub fn op_count(&self) -> u64 {
        self.fs().stats.ops
    }

    /// Fails mutating operation number `n` (and only it) with `fault`; the operation has no
    /// effect. A failed `sync_data` drops its file's pending writes (see the module docs).
    pub fn fail_op(&self, n: u64, fault: Fault) {
        self.fs().faults.insert(n, fault);
    }

    /// Fails the next `sync_data` (on any file) with EIO and drops that file's pending writes
    /// from durability: they stay readable but never become durable (fsyncgate).
    pub fn fail_sync_once(&self) {
        self.fs().fail_next_sync = true;
    }

    /// Makes writes that would grow the live size of all named files beyond `bytes` fail with
    /// ENOSPC. Not carried over into crash images.
    pub fn set_space_limit(&self, bytes: u64) {
        self.fs().space_limit = Some(bytes);
    }

    /// Removes the space limit.
    pub fn clear_space_limit(&self) {
        self.fs().space_limit = None;
    }

    /// Counters of what happened so far.
    pub fn stats(&self) -> SimStats {
        self.fs().stats
    }

    /// The live content of a file (what a read sees), or `None` when there is no such file.
    /// Works on a dead `SimVfs` too (the state frozen at the crash).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs();
        match fs.node(&norm(path))? {
            Node::File(ino) => fs.inodes.get(&ino).map(|i| i.live.clone()),
            Node::Dir => None,
        }
    }

    /// The content of a file that every crash image is guaranteed to hold: `None` unless the
    /// name and all its parent directories are durable, else the file's synced content.
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs();
        let path = norm(path);
        let ancestors_durable = path
            .ancestors()
            .skip(1)
            .all(|p| is_root(p) || fs.durable.get(p) == Some(&Node::Dir));
        if !ancestors_durable {
            return None;
        }
        match fs.durable.get(&path)? {
            Node::File(ino) => fs.inodes.get(ino).map(|i| i.durable.clone()),
            Node::Dir => None,
        }
    }

    /// Replaces a file's content at rest, durably, creating it and its parent directories
    /// (durably) when missing; the file's pending writes are discarded. For injecting
    /// corruption into a crash image. Not counted as an operation.
    ///
    /// # Panics
    /// When `path` or one of its parents is of the wrong kind (a directory where the file
    /// should be, a file where a directory should be): a mistake in the test.
    pub fn write_file_durable(&self, path: &Path, bytes: &[u8]) {
        let path = norm(path);
        let mut fs = self.fs();
        if let Some(parent) = path.parent() {
            ensure_dirs_durable(&mut fs, parent);
        }
        let ino = match fs.node(&path) {
            Some(Node::File(ino)) => ino,
            Some(Node::Dir) => panic!("write_file_durable: {} is a directory", path.display()),
            None => {
                let ino = fs.alloc_inode();
                fs.live.insert(path.clone(), Node::File(ino));
                ino
            }
        };
        fs.durable.insert(path, Node::File(ino));
        fs.inodes.insert(ino, Inode::with_content(bytes.to_vec()));
    }

    /// Creates a directory and its parents, durably at once: for setting up the parent
    /// directory of a store, which a real system had long before the test. Not counted as an
    /// operation.
    ///
    /// # Panics
    /// When a file is in the way.
    pub fn create_dir_all_durable(&self, path: &Path) {
        ensure_dirs_durable(&mut self.fs(), &norm(path));
    }

    /// Every live file path, sorted (directories are left out).
    pub fn list_all(&self) -> Vec<PathBuf> {
        self.fs()
            .live
            .iter()
            .filter(|(_, n)| matches!(n, Node::File(_)))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

fn ensure_dirs_durable(fs: &mut Fs, path: &Path) {
    let mut chain: Vec<&Path> = path.ancestors().filter(|p| !is_root(p)).collect();
    chain.reverse();
    for dir in chain {
        match fs.node(dir) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => panic!("{} is a file, not a directory", dir.display()),
            None => {
                fs.live.insert(dir.to_path_buf(), Node::Dir);
            }
        }
        fs.durable.insert(dir.to_path_buf(), Node::Dir);
    }
}

/// An open simulated file.
#[derive(Debug)]
struct SimFile {
    fs: Arc<Mutex<Fs>>,
    ino: Ino,
    writable: bool,
}

fn bad_fd() -> io::Error {
    io::Error::from_raw_os_error(EBADF)
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let fs = lock_poison_free(&self.fs);
        fs.check_alive()?;
        let data = &fs.inode(self.ino)?.live;
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let op = write_op(buf, offset);
        let mut fs = lock_poison_free(&self.fs);
        let in_flight = op.as_ref().ok().filter(|_| self.writable);
        fs.begin_op(in_flight.map(|op| (self.ino, op)))?;
        if !self.writable {
            return Err(bad_fd());
        }
        let op = op?;
        if let Some(limit) = fs.space_limit {
            let old_len = fs.inode(self.ino)?.live.len() as u64;
            let new_len = old_len.max(offset + buf.len() as u64);
            if fs.live_bytes() + (new_len - old_len) > limit {
                fs.stats.failed_ops += 1;
                return Err(Fault::Enospc.to_error());
            }
        }
        let inode = fs.inode_mut(self.ino)?;
        op.apply(&mut inode.live);
        inode.pending.push(op);
        fs.stats.writes += 1;
        fs.stats.bytes_written += buf.len() as u64;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let fs = lock_poison_free(&self.fs);
        fs.check_alive()?;
        Ok(fs.inode(self.ino)?.live.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut fs = lock_poison_free(&self.fs);
        fs.begin_op(None)?;
        if !self.writable {
            return Err(bad_fd());
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l as u64 <= MAX_FILE_BYTES)
            .ok_or_else(|| io::Error::from_raw_os_error(EFBIG))?;
        let op = FileOp::SetLen(len);
        let inode = fs.inode_mut(self.ino)?;
        op.apply(&mut inode.live);
        inode.pending.push(op);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut fs = lock_poison_free(&self.fs);
        let injected = match fs.begin_op(None) {
            Ok(()) if fs.fail_next_sync => {
                fs.fail_next_sync = false;
                fs.stats.failed_ops += 1;
                Some(Fault::Eio.to_error())
            }
            Ok(()) => None,
            Err(Refused::Dead(e)) => return Err(e),
            Err(Refused::Fault(e)) => Some(e),
        };
        let inode = fs.inode_mut(self.ino)?;
        if let Some(e) = injected {
            // fsyncgate: the kernel marks the pages clean after a failed writeback, so these
            // writes stay readable but will never reach the disk.
            inode.pending.clear();
            return Err(e);
        }
        let Inode {
            durable, pending, ..
        } = inode;
        for op in pending.drain(..) {
            op.apply(durable);
        }
        fs.stats.data_syncs += 1;
        Ok(())
    }
}

#[derive(Debug)]
struct SimLock {
    fs: Arc<Mutex<Fs>>,
    path: PathBuf,
}

impl VfsLock for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        lock_poison_free(&self.fs).locks.remove(&self.path);
    }
}

impl Vfs for SimVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut fs = self.fs();
        fs.begin_op(None)?;
        let mut chain: Vec<&Path> = path.ancestors().filter(|p| !is_root(p)).collect();
        chain.reverse();
        for dir in chain {
            match fs.node(dir) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => return Err(not_a_directory(dir)),
                None => {
                    let parent = fs.parent_dir(dir)?;
                    fs.live.insert(dir.to_path_buf(), Node::Dir);
                    fs.push_ns(
                        parent,
                        NsOp::Mkdir {
                            path: dir.to_path_buf(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let path = norm(path);
        let mut fs = self.fs();
        let creating = matches!(mode, OpenMode::Create | OpenMode::CreateNew);
        if creating {
            fs.begin_op(None)?;
        } else {
            fs.check_alive()?;
        }
        let ino = match (fs.node(&path), mode) {
            (Some(Node::Dir), _) => return Err(is_a_directory(&path)),
            (Some(Node::File(_)), OpenMode::CreateNew) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: file exists", path.display()),
                ))
            }
            (Some(Node::File(ino)), _) => ino,
            (None, OpenMode::Create | OpenMode::CreateNew) => {
                let parent = fs.parent_dir(&path)?;
                let ino = fs.alloc_inode();
                fs.live.insert(path.clone(), Node::File(ino));
                fs.push_ns(parent, NsOp::Link { path, ino });
                ino
            }
            (None, OpenMode::Read | OpenMode::ReadWrite) => return Err(not_found(&path)),
        };
        Ok(Arc::new(SimFile {
            fs: self.inner.clone(),
            ino,
            writable: mode != OpenMode::Read,
        }))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let path = norm(path);
        let fs = self.fs();
        fs.check_alive()?;
        match fs.node(&path) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => return Err(not_a_directory(&path)),
            None => return Err(not_found(&path)),
        }
        // Descendants of a path sort right after it, component by component.
        let names = fs
            .live
            .range::<Path, _>((Bound::Excluded(path.as_path()), Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(&path))
            .filter(|(p, _)| p.parent() == Some(path.as_path()))
            .filter_map(|(p, _)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let fs = self.fs();
        fs.check_alive()?;
        Ok(fs.node(&norm(path)).is_some())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut fs = self.fs();
        fs.begin_op(None)?;
        match fs.node(&path) {
            Some(Node::File(_)) => {}
            Some(Node::Dir) => return Err(is_a_directory(&path)),
            None => return Err(not_found(&path)),
        }
        let parent = fs.parent_dir(&path)?;
        fs.live.remove(&path);
        fs.push_ns(parent, NsOp::Unlink { path });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (norm(from), norm(to));
        let mut fs = self.fs();
        fs.begin_op(None)?;
        let ino = match fs.node(&from) {
            Some(Node::File(ino)) => ino,
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "{}: the simulated file system renames files only",
                        from.display()
                    ),
                ))
            }
            None => return Err(not_found(&from)),
        };
        let from_dir = fs.parent_dir(&from)?;
        let to_dir = fs.parent_dir(&to)?;
        if fs.node(&to) == Some(Node::Dir) {
            return Err(is_a_directory(&to));
        }
        if from == to {
            return Ok(());
        }
        fs.live.remove(&from);
        fs.live.insert(to.clone(), Node::File(ino));
        if from_dir == to_dir {
            fs.push_ns(from_dir, NsOp::Rename { from, to, ino });
        } else {
            fs.push_ns(from_dir, NsOp::Unlink { path: from });
            fs.push_ns(to_dir, NsOp::Link { path: to, ino });
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = norm(path);
        let mut fs = self.fs();
        fs.begin_op(None)?;
        match fs.node(&path) {
            Some(Node::Dir) => {}
            Some(Node::File(_)) => return Err(not_a_directory(&path)),
            None => return Err(not_found(&path)),
        }
        let ops = fs.pending_dirs.remove(&path).unwrap_or_default();
        for op in &ops {
            op.apply(&mut fs.durable);
        }
        fs.stats.dir_syncs += 1;
        Ok(())
    }

    /// With a space limit: what is left under it (unknown without one).
    fn free_bytes(&self, _path: &Path) -> io::Result<Option<u64>> {
        let fs = self.fs();
        Ok(fs.space_limit.map(|l| l.saturating_sub(fs.live_bytes())))
    }
    fn lock(&self, path: &Path) -> Result<Box<dyn VfsLock>, LockError> {
        let path = norm(path);
        let mut fs = self.fs();
        fs.check_alive().map_err(LockError::Io)?;
        fs.parent_dir(&path).map_err(LockError::Io)?;
        if !fs.locks.insert(path.clone()) {
            return Err(LockError::Held {
                pid: Some(std::process::id()),
            });
        }
        Ok(Box::new(SimLock {
            fs: self.inner.clone(),
            path,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEDS: u64 = 400;

    fn dir() -> PathBuf {
        PathBuf::from("/store")
    }

    /// A file system with `/store` durable, as a store's parent directory would be.
    fn setup() -> SimVfs {
        let vfs = SimVfs::new();
        vfs.create_dir_all_durable(&dir());
        vfs
    }

    /// Every file and its live content.
    fn snapshot(vfs: &SimVfs) -> BTreeMap<PathBuf, Vec<u8>> {
        vfs.list_all()
            .into_iter()
            .map(|p| {
                let bytes = vfs.file_bytes(&p).unwrap();
                (p, bytes)
            })
            .collect()
    }

    fn create(vfs: &SimVfs, name: &str) -> Arc<dyn VfsFile> {
        vfs.open(&dir().join(name), OpenMode::CreateNew).unwrap()
    }

    /// A durable, named file with `content`.
    fn durable_file(vfs: &SimVfs, name: &str, content: &[u8]) -> Arc<dyn VfsFile> {
        let f = create(vfs, name);
        f.write_all_at(content, 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&dir()).unwrap();
        f
    }

    #[test]
    fn behaves_like_a_file_system() {
        let vfs = SimVfs::new();
        let store = dir();
        vfs.create_dir_all(&store).unwrap();
        assert!(vfs.exists(&store).unwrap());
        let a_path = store.join("a");
        assert_eq!(
            vfs.open(&a_path, OpenMode::Read).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let file_a = vfs.open(&a_path, OpenMode::CreateNew).unwrap();
        file_a.write_all_at(b"hello", 0).unwrap();
        file_a.write_all_at(b"world", 10).unwrap();
        assert_eq!(file_a.len().unwrap(), 15);
        let mut buf = [0u8; 15];
        file_a.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello\0\0\0\0\0world");
        assert_eq!(
            vfs.open(&a_path, OpenMode::CreateNew).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        file_a.set_len(5).unwrap();
        assert_eq!(vfs.file_bytes(&a_path).unwrap(), b"hello");

        // Rename replaces the target; the open handle follows the inode.
        let file_b = vfs.open(&store.join("b"), OpenMode::Create).unwrap();
        file_b.write_all_at(b"bbb", 0).unwrap();
        vfs.rename(&a_path, &store.join("b")).unwrap();
        assert_eq!(vfs.read_dir(&store).unwrap(), vec!["b".to_string()]);
        assert_eq!(vfs.file_bytes(&store.join("b")).unwrap(), b"hello");
        file_a.write_all_at(b"!", 5).unwrap();
        assert_eq!(vfs.file_bytes(&store.join("b")).unwrap(), b"hello!");

        vfs.create_dir_all(&store.join("log")).unwrap();
        assert_eq!(
            vfs.read_dir(&store).unwrap(),
            vec!["b".to_string(), "log".to_string()]
        );
        assert_eq!(vfs.read_dir(Path::new("/")).unwrap(), vec!["store"]);
        assert_eq!(
            vfs.open(&store.join("nodir/x"), OpenMode::Create)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );

        // A read-only handle refuses writes.
        let reader = vfs.open(&store.join("b"), OpenMode::Read).unwrap();
        assert_eq!(
            reader.write_all_at(b"x", 0).unwrap_err().raw_os_error(),
            Some(EBADF)
        );

        vfs.remove_file(&store.join("b")).unwrap();
        assert!(!vfs.exists(&store.join("b")).unwrap());
        assert_eq!(
            vfs.remove_file(&store.join("b")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );

        let lock = vfs.lock(&store.join("LOCK")).unwrap();
        assert!(matches!(
            vfs.lock(&store.join("LOCK")),
            Err(LockError::Held { pid: Some(_) })
        ));
        drop(lock);
        vfs.lock(&store.join("LOCK")).unwrap();
    }

    #[test]
    fn synced_data_survives_every_crash_image() {
        let vfs = setup();
        let f = durable_file(&vfs, "seg", &[7u8; 3000]);
        // Unsynced appends after the synced region, some spanning sectors (tearable).
        f.write_all_at(&[8u8; 1500], 3000).unwrap();
        f.write_all_at(&[9u8; 100], 4500).unwrap();
        let g = create(&vfs, "new"); // unsynced name
        g.write_all_at(b"x", 0).unwrap();
        assert_eq!(
            vfs.durable_bytes(&dir().join("seg")).unwrap(),
            vec![7u8; 3000]
        );
        assert_eq!(vfs.durable_bytes(&dir().join("new")), None);
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            let bytes = img.file_bytes(&dir().join("seg")).unwrap();
            assert!(bytes.len() >= 3000, "seed {seed}");
            assert_eq!(&bytes[..3000], &[7u8; 3000][..], "seed {seed}");
        }
    }

    #[test]
    fn unsynced_writes_are_an_arbitrary_subset() {
        let vfs = setup();
        let f = durable_file(&vfs, "seg", b"");
        // Three one-sector writes: none can be torn, so each is either whole or absent.
        for i in 0..3u8 {
            f.write_all_at(&[i + 1; 512], u64::from(i) * 512).unwrap();
        }
        let mut patterns = BTreeSet::new();
        for seed in 0..SEEDS {
            let bytes = vfs
                .crash_image(seed)
                .file_bytes(&dir().join("seg"))
                .unwrap();
            let mut kept = [false; 3];
            for (i, k) in kept.iter_mut().enumerate() {
                let region = bytes.get(i * 512..(i + 1) * 512);
                *k = region == Some(&[i as u8 + 1; 512][..]);
                if !*k {
                    // Lost: a hole (zeros) or past the end of the file.
                    assert!(
                        region.is_none_or(|r| r.iter().all(|b| *b == 0)),
                        "seed {seed}: region {i} is neither the write nor empty"
                    );
                }
            }
            // The file ends right after the last kept write.
            let last = kept.iter().rposition(|k| *k).map_or(0, |i| (i + 1) * 512);
            assert_eq!(bytes.len(), last, "seed {seed}");
            patterns.insert(kept);
        }
        // Every one of the 8 subsets occurs, including non-prefixes such as (lost, kept, kept).
        assert_eq!(patterns.len(), 8, "{patterns:?}");
        assert!(patterns.contains(&[false, true, false]));
    }

    #[test]
    fn synced_file_in_unsynced_directory_can_vanish() {
        let vfs = setup();
        let f = create(&vfs, "ckpt");
        f.write_all_at(b"checkpoint", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(vfs.durable_bytes(&dir().join("ckpt")), None);
        let mut present = 0;
        for seed in 0..SEEDS {
            if let Some(bytes) = vfs.crash_image(seed).file_bytes(&dir().join("ckpt")) {
                assert_eq!(bytes, b"checkpoint", "seed {seed}");
                present += 1;
            }
        }
        assert!(
            present > 0 && present < SEEDS,
            "present in {present} images"
        );
        // A kill -9 keeps the entry; a total loss drops it.
        let killed = vfs.crash_image_with(0, &CrashModel::process_kill());
        assert_eq!(
            killed.file_bytes(&dir().join("ckpt")).unwrap(),
            b"checkpoint"
        );
        let lost = vfs.crash_image_with(0, &CrashModel::lose_all_pending());
        assert_eq!(lost.file_bytes(&dir().join("ckpt")), None);

        vfs.sync_dir(&dir()).unwrap();
        assert_eq!(
            vfs.durable_bytes(&dir().join("ckpt")).unwrap(),
            b"checkpoint"
        );
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            assert_eq!(img.file_bytes(&dir().join("ckpt")).unwrap(), b"checkpoint");
        }
    }

    #[test]
    fn file_in_a_new_unsynced_subdirectory_can_vanish() {
        let vfs = setup();
        let log = dir().join("log");
        vfs.create_dir_all(&log).unwrap();
        let f = vfs.open(&log.join("1.seg"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"seg", 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&log).unwrap(); // the entry in log/ is durable, log/ itself is not
        assert_eq!(vfs.durable_bytes(&log.join("1.seg")), None);
        let mut present = 0;
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            let exists = img.exists(&log).unwrap();
            let file = img.file_bytes(&log.join("1.seg"));
            // The file exists exactly when the directory does.
            assert_eq!(exists, file.is_some(), "seed {seed}");
            present += u64::from(exists);
        }
        assert!(present > 0 && present < SEEDS);
        vfs.sync_dir(&dir()).unwrap();
        assert_eq!(vfs.durable_bytes(&log.join("1.seg")).unwrap(), b"seg");
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            assert_eq!(img.file_bytes(&log.join("1.seg")).unwrap(), b"seg");
        }
    }

    #[test]
    fn rename_without_dir_sync_may_revert_but_never_mixes() {
        let vfs = setup();
        durable_file(&vfs, "FORMAT", b"old");
        let tmp = create(&vfs, "FORMAT.tmp");
        tmp.write_all_at(b"new", 0).unwrap();
        tmp.sync_data().unwrap();
        vfs.rename(&dir().join("FORMAT.tmp"), &dir().join("FORMAT"))
            .unwrap();
        let (mut reverted, mut renamed) = (0, 0);
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            let format = img.file_bytes(&dir().join("FORMAT")).unwrap();
            let tmp = img.file_bytes(&dir().join("FORMAT.tmp"));
            if format == b"new" {
                assert_eq!(tmp, None, "seed {seed}");
                renamed += 1;
            } else {
                assert_eq!(format, b"old", "seed {seed}");
                // Before the rename the tmp name may or may not have been journaled yet.
                assert!(tmp.is_none_or(|t| t == b"new"), "seed {seed}");
                reverted += 1;
            }
        }
        assert!(
            reverted > 0 && renamed > 0,
            "{reverted} reverted, {renamed} renamed"
        );
        vfs.sync_dir(&dir()).unwrap();
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            assert_eq!(img.file_bytes(&dir().join("FORMAT")).unwrap(), b"new");
            assert_eq!(img.file_bytes(&dir().join("FORMAT.tmp")), None);
        }
    }

    #[test]
    fn removal_without_dir_sync_may_revert() {
        let vfs = setup();
        durable_file(&vfs, "old.seg", b"data");
        vfs.remove_file(&dir().join("old.seg")).unwrap();
        let back = (0..SEEDS)
            .filter(|s| vfs.crash_image(*s).exists(&dir().join("old.seg")).unwrap())
            .count();
        assert!(back > 0 && back < SEEDS as usize);
        vfs.sync_dir(&dir()).unwrap();
        assert!(!vfs.crash_image(1).exists(&dir().join("old.seg")).unwrap());
    }

    #[test]
    fn directory_ops_survive_as_a_prefix() {
        let vfs = setup();
        // Create a, b, c in order: an image never holds a later one without the earlier ones.
        for name in ["a", "b", "c"] {
            durable_file_data_only(&vfs, name);
        }
        let mut counts = BTreeSet::new();
        for seed in 0..SEEDS {
            let img = vfs.crash_image(seed);
            let names = img.read_dir(&dir()).unwrap();
            let expect: Vec<String> = ["a", "b", "c"][..names.len()]
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(names, expect, "seed {seed}");
            counts.insert(names.len());
        }
        assert_eq!(counts.len(), 4);
    }

    fn durable_file_data_only(vfs: &SimVfs, name: &str) {
        let f = create(vfs, name);
        f.write_all_at(name.as_bytes(), 0).unwrap();
        f.sync_data().unwrap();
    }

    #[test]
    fn torn_writes_keep_a_sector_aligned_prefix() {
        const OLD: u8 = 0x11;
        const NEW: u8 = 0x22;
        let (offset, len) = (100usize, 4096usize);
        let end = offset + len;
        let vfs = setup();
        let f = durable_file(&vfs, "seg", &[OLD; 8192]);
        f.write_all_at(&[NEW; 4096], offset as u64).unwrap();
        let valid_cut = |c: usize| c == offset || c == end || (c > offset && c.is_multiple_of(512));
        let (mut whole, mut lost, mut torn_old, mut torn_zero, mut torn_garbage) = (0, 0, 0, 0, 0);
        for seed in 0..SEEDS * 2 {
            let bytes = vfs
                .crash_image(seed)
                .file_bytes(&dir().join("seg"))
                .unwrap();
            assert_eq!(bytes.len(), 8192, "seed {seed}");
            assert!(bytes[..offset].iter().all(|b| *b == OLD), "seed {seed}");
            assert!(bytes[end..].iter().all(|b| *b == OLD), "seed {seed}");
            let region = &bytes[offset..end];
            let first_other = region
                .iter()
                .position(|b| *b != NEW)
                .map_or(end, |i| offset + i);
            if first_other == end {
                whole += 1;
                continue;
            }
            let rest = &bytes[first_other..end];
            if rest.iter().all(|b| *b == OLD) {
                assert!(valid_cut(first_other), "seed {seed}: cut at {first_other}");
                if first_other == offset {
                    lost += 1; // lost, or torn before its first sector: the same image
                } else {
                    torn_old += 1;
                }
            } else if rest.iter().all(|b| *b == 0) {
                assert!(valid_cut(first_other), "seed {seed}: cut at {first_other}");
                torn_zero += 1;
            } else {
                // Garbage: the true cut is the last valid cut at or before the first
                // mismatch (a garbage byte can equal NEW by chance, rarely many in a row).
                let cut = (offset..=first_other)
                    .rev()
                    .find(|c| valid_cut(*c))
                    .unwrap();
                assert!(
                    first_other - cut < 16,
                    "seed {seed}: new bytes past the cut"
                );
                let new_after = rest.iter().map(|b| usize::from(*b == NEW)).sum::<usize>();
                assert!(
                    new_after < rest.len() / 8,
                    "seed {seed}: garbage looks like data"
                );
                torn_garbage += 1;
            }
        }
        for (what, n) in [
            ("whole", whole),
            ("lost", lost),
            ("torn with old content", torn_old),
            ("torn with zeros", torn_zero),
            ("torn with garbage", torn_garbage),
        ] {
            assert!(n > 0, "no image with the write {what}");
        }

        // Without torn writes, the write is whole or absent.
        let model = CrashModel::power_loss().with_torn_writes(false);
        for seed in 0..SEEDS {
            let bytes = vfs
                .crash_image_with(seed, &model)
                .file_bytes(&dir().join("seg"))
                .unwrap();
            let region = &bytes[offset..end];
            assert!(
                region.iter().all(|b| *b == NEW) || region.iter().all(|b| *b == OLD),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn torn_append_leaves_a_sector_aligned_length() {
        let vfs = setup();
        let f = durable_file(&vfs, "seg", &[1u8; 1000]);
        f.write_all_at(&[2u8; 3000], 1000).unwrap();
        let mut lens = BTreeSet::new();
        for seed in 0..SEEDS {
            let bytes = vfs
                .crash_image(seed)
                .file_bytes(&dir().join("seg"))
                .unwrap();
            let n = bytes.len();
            assert!(
                n == 1000 || n == 4000 || n.is_multiple_of(512),
                "seed {seed}: len {n}"
            );
            assert!((1000..=4000).contains(&n), "seed {seed}: len {n}");
            assert!(bytes[..1000].iter().all(|b| *b == 1));
            lens.insert(n);
        }
        assert!(lens.contains(&1000) && lens.contains(&4000));
        assert!(lens.iter().any(|n| *n != 1000 && *n != 4000), "{lens:?}");
    }

    /// Runs a fixed workload against `vfs`, stopping at the first error, or cleanly before
    /// operation number `stop` (pass `u64::MAX` to run it all).
    fn workload(vfs: &SimVfs, stop: u64) -> io::Result<()> {
        let store = dir();
        let go = || vfs.op_count() + 1 < stop;
        macro_rules! step {
            ($e:expr) => {{
                if !go() {
                    return Ok(());
                }
                $e
            }};
        }
        step!(vfs.create_dir_all(&store.join("log"))?); // 1
        let seg = step!(vfs.open(&store.join("log/1.seg"), OpenMode::CreateNew)?); // 2
        step!(seg.write_all_at(&[1u8; 1500], 0)?); // 3
        step!(seg.sync_data()?); // 4
        step!(vfs.sync_dir(&store.join("log"))?); // 5
        step!(vfs.sync_dir(&store)?); // 6
        step!(seg.write_all_at(&[2u8; 1500], 1500)?); // 7
        let ckpt = step!(vfs.open(&store.join("ckpt.tmp"), OpenMode::Create)?); // 8
        step!(ckpt.write_all_at(b"ckpt", 0)?); // 9
        step!(ckpt.sync_data()?); // 10
        step!(vfs.rename(&store.join("ckpt.tmp"), &store.join("ckpt.0"))?); // 11
        step!(seg.sync_data()?); // 12
        step!(vfs.sync_dir(&store)?); // 13
        step!(seg.set_len(1000)?); // 14
        step!(vfs.remove_file(&store.join("ckpt.0"))?); // 15
        Ok(())
    }
    const WORKLOAD_OPS: u64 = 15;
    /// The workload's writes: a crash there may leave the interrupted write in the image.
    const WORKLOAD_WRITES: [u64; 3] = [3, 7, 9];

    #[test]
    fn crash_at_op_captures_that_instant_and_kills_the_machine() {
        let counting = setup();
        workload(&counting, u64::MAX).unwrap();
        assert_eq!(counting.op_count(), WORKLOAD_OPS);

        let mut in_flight_kept = 0;
        for n in 1..=WORKLOAD_OPS {
            for seed in 0..20 {
                let vfs = setup();
                vfs.set_crash_at(n, seed);
                let err = workload(&vfs, u64::MAX).unwrap_err();
                assert!(is_power_loss(&err), "op {n}: {err}");
                assert_eq!(err.to_string(), "simulated power loss");
                assert!(vfs.is_crashed());
                assert_eq!(vfs.op_count(), n);
                let image = snapshot(&vfs.take_crash_image().expect("image captured"));
                assert!(vfs.take_crash_image().is_none());

                // The same image as a crash of the workload stopped just before op n, except
                // that an interrupted write may be in it (whole or torn).
                let before = setup();
                workload(&before, n).unwrap();
                assert_eq!(before.op_count(), n - 1);
                let reference = snapshot(&before.crash_image(seed));
                if WORKLOAD_WRITES.contains(&n) {
                    if image != reference {
                        in_flight_kept += 1;
                        assert_eq!(
                            image.keys().collect::<Vec<_>>(),
                            reference.keys().collect::<Vec<_>>()
                        );
                    }
                } else {
                    assert_eq!(image, reference, "op {n} seed {seed}");
                }

                // Every call fails now, on the file system and on open files.
                let d = dir();
                assert!(is_power_loss(&vfs.exists(&d).unwrap_err()));
                assert!(is_power_loss(&vfs.read_dir(&d).unwrap_err()));
                assert!(is_power_loss(
                    &vfs.open(&d.join("x"), OpenMode::Read).unwrap_err()
                ));
                assert!(is_power_loss(&vfs.sync_dir(&d).unwrap_err()));
                assert!(matches!(vfs.lock(&d.join("LOCK")), Err(LockError::Io(_))));
                // Refused calls are not numbered.
                assert_eq!(vfs.op_count(), n);
            }
        }
        assert!(
            in_flight_kept > 0,
            "an interrupted write never reached an image"
        );
    }

    #[test]
    fn crash_image_is_a_fresh_machine() {
        let vfs = setup();
        vfs.set_crash_at(5, 3);
        let _ = workload(&vfs, u64::MAX);
        let img = vfs.take_crash_image().unwrap();
        assert!(!img.is_crashed());
        assert_eq!(img.op_count(), 0);
        // Usable: write, sync, crash again.
        let f = img.open(&dir().join("after"), OpenMode::CreateNew).unwrap();
        f.write_all_at(b"ok", 0).unwrap();
        f.sync_data().unwrap();
        img.sync_dir(&dir()).unwrap();
        assert_eq!(
            img.crash_image(9).file_bytes(&dir().join("after")).unwrap(),
            b"ok"
        );
    }

    #[test]
    fn open_files_fail_after_the_crash() {
        let vfs = setup();
        let f = durable_file(&vfs, "seg", b"abc");
        vfs.set_crash_at(vfs.op_count() + 1, 0);
        assert!(is_power_loss(&f.write_all_at(b"d", 3).unwrap_err()));
        let mut buf = [0u8; 3];
        assert!(is_power_loss(&f.read_at(&mut buf, 0).unwrap_err()));
        assert!(is_power_loss(&f.len().unwrap_err()));
        assert!(is_power_loss(&f.sync_data().unwrap_err()));
        assert!(is_power_loss(&f.set_len(0).unwrap_err()));
        // The live state is frozen before the write that crashed.
        assert_eq!(vfs.file_bytes(&dir().join("seg")).unwrap(), b"abc");
        let image = vfs.take_crash_image().unwrap();
        let bytes = image.file_bytes(&dir().join("seg")).unwrap();
        assert!(bytes == b"abc" || bytes == b"abcd", "{bytes:?}");
    }

    #[test]
    fn process_kill_crash_keeps_everything_before_the_op() {
        let vfs = setup();
        vfs.set_crash_model(CrashModel::process_kill());
        vfs.set_crash_at(15, 0);
        let _ = workload(&vfs, u64::MAX);
        let image = vfs.take_crash_image().unwrap();
        assert_eq!(snapshot(&image), snapshot(&vfs));
        assert_eq!(image.crash_model(), CrashModel::process_kill());
    }

    #[test]
    fn lose_all_keeps_only_durable_state() {
        let vfs = setup();
        workload(&vfs, u64::MAX).unwrap();
        let image = vfs.crash_image_with(0, &CrashModel::lose_all_pending());
        // ckpt.0's removal and the truncation are pending: both undone.
        let mut expect = BTreeMap::new();
        let mut seg = vec![1u8; 1500];
        seg.extend_from_slice(&[2u8; 1500]);
        expect.insert(dir().join("ckpt.0"), b"ckpt".to_vec());
        expect.insert(dir().join("log/1.seg"), seg);
        assert_eq!(snapshot(&image), expect);
    }

    #[test]
    fn fail_op_fails_exactly_one_op() {
        let vfs = setup();
        let f = create(&vfs, "seg"); // op 1
        vfs.fail_op(3, Fault::Enospc);
        f.write_all_at(b"one", 0).unwrap(); // op 2
        let err = f.write_all_at(b"two", 3).unwrap_err(); // op 3
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(!is_power_loss(&err));
        f.write_all_at(b"three", 3).unwrap(); // op 4
        assert_eq!(vfs.file_bytes(&dir().join("seg")).unwrap(), b"onethree");
        assert_eq!(vfs.op_count(), 4);
        assert_eq!(vfs.stats().failed_ops, 1);

        vfs.fail_op(5, Fault::Eio);
        let err = vfs.sync_dir(&dir()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        assert_eq!(vfs.durable_bytes(&dir().join("seg")), None);
        vfs.sync_dir(&dir()).unwrap();
        assert!(!vfs.is_crashed());
    }

    #[test]
    fn failed_fsync_drops_pending_writes_for_good() {
        let vfs = setup();
        let f = durable_file(&vfs, "seg", b"synced");
        f.write_all_at(b"-lost", 6).unwrap();
        vfs.fail_sync_once();
        let err = f.sync_data().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(EIO));
        // Still readable (the page cache holds it) ...
        assert_eq!(vfs.file_bytes(&dir().join("seg")).unwrap(), b"synced-lost");
        // ... but a retried fsync does not make it durable.
        f.sync_data().unwrap();
        assert_eq!(vfs.durable_bytes(&dir().join("seg")).unwrap(), b"synced");
        let model = CrashModel::process_kill();
        for seed in 0..50 {
            let img = vfs.crash_image(seed);
            assert_eq!(img.file_bytes(&dir().join("seg")).unwrap(), b"synced");
            let img = vfs.crash_image_with(seed, &model);
            assert_eq!(img.file_bytes(&dir().join("seg")).unwrap(), b"synced");
        }
        // Later writes still become durable.
        f.write_all_at(b"+kept", 11).unwrap();
        f.sync_data().unwrap();
        let mut expect = b"synced".to_vec();
        expect.extend_from_slice(&[0; 5]);
        expect.extend_from_slice(b"+kept");
        assert_eq!(vfs.durable_bytes(&dir().join("seg")).unwrap(), expect);

        // The same through fail_op.
        f.write_all_at(b"X", 0).unwrap();
        vfs.fail_op(vfs.op_count() + 1, Fault::Eio);
        f.sync_data().unwrap_err();
        f.sync_data().unwrap();
        assert_eq!(vfs.durable_bytes(&dir().join("seg")).unwrap(), expect);
    }

    #[test]
    fn space_limit_fails_growing_writes_with_enospc() {
        let vfs = setup();
        vfs.set_space_limit(1000);
        let a = create(&vfs, "a");
        a.write_all_at(&[1; 600], 0).unwrap();
        let b = create(&vfs, "b");
        let err = b.write_all_at(&[2; 600], 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(vfs.file_bytes(&dir().join("b")).unwrap(), b"");
        b.write_all_at(&[2; 400], 0).unwrap(); // exactly at the limit
        a.write_all_at(&[3; 600], 0).unwrap(); // overwrites do not grow
        assert!(a.write_all_at(&[3], 600).is_err());
        vfs.remove_file(&dir().join("a")).unwrap(); // freeing space lets writes progress
        b.write_all_at(&[2; 600], 400).unwrap();
        vfs.clear_space_limit();
        b.write_all_at(&[2; 6000], 0).unwrap();
    }

    #[test]
    fn same_seed_same_image_other_seeds_differ() {
        let run = |seed: u64| {
            let vfs = setup();
            workload(&vfs, u64::MAX).unwrap();
            snapshot(&vfs.crash_image(seed))
        };
        let distinct: BTreeSet<_> = (0..50).map(run).collect();
        assert!(distinct.len() > 1);
        for seed in [0, 1, 42, u64::MAX] {
            assert_eq!(run(seed), run(seed));
        }
        // Crash-at-op images are deterministic too.
        let at = |n: u64, seed: u64| {
            let vfs = setup();
            vfs.set_crash_at(n, seed);
            let _ = workload(&vfs, u64::MAX);
            snapshot(&vfs.take_crash_image().unwrap())
        };
        for n in 1..=WORKLOAD_OPS {
            assert_eq!(at(n, 7), at(n, 7));
        }
    }

    #[test]
    fn corruption_can_be_injected_at_rest() {
        let vfs = setup();
        durable_file(&vfs, "seg", b"good");
        vfs.write_file_durable(&dir().join("seg"), b"bad!");
        vfs.write_file_durable(&dir().join("blob/1.blob"), b"x");
        for seed in 0..20 {
            let img = vfs.crash_image(seed);
            assert_eq!(img.file_bytes(&dir().join("seg")).unwrap(), b"bad!");
            assert_eq!(img.file_bytes(&dir().join("blob/1.blob")).unwrap(), b"x");
        }
        assert_eq!(
            vfs.list_all(),
            vec![dir().join("blob/1.blob"), dir().join("seg")]
        );
    }

    #[test]
    fn splitmix64_is_the_reference_sequence() {
        // First outputs for seed 1234567 from the reference implementation (Vigna's
        // splitmix64.c); a change here would silently change every recorded crash seed.
        let mut rng = SplitMix64::new(1_234_567);
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn is_send_sync_and_cloned_handles_share_state() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SimVfs>();
        let vfs = setup();
        let other = vfs.clone();
        create(&vfs, "x");
        assert!(other.exists(&dir().join("x")).unwrap());
        let debug = format!("{vfs:?}");
        assert!(debug.contains("SimVfs"));
    }
}
