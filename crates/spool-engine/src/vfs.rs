//! The file-system seam. Every byte the engine reads or writes goes through [`Vfs`], so that
//! the same code runs on the real file system ([`OsVfs`]), in memory ([`MemVfs`], used by
//! `Store::in_memory`) and on the crash simulator of `spool-testkit`, which records every write
//! and sync and can produce the file system as it would look after a power cut at any point.
//!
//! The trait is deliberately small: positional reads and writes, `fdatasync`, directory fsync,
//! rename, unlink, list, and an exclusive lock. The engine never relies on anything else (no
//! mmap, no `O_APPEND`, no preallocation), which is what makes the simulation faithful.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    ReadWrite,
    /// Read and write; the file is created when missing (existing content is kept).
    Create,
    /// Read and write; the file must not exist yet.
    CreateNew,
}

/// Why an exclusive lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another owner holds the lock; `pid` is the holder's process id when it could be read.
    Held { pid: Option<u32> },
    /// The lock file could not be opened or locked.
    Io(io::Error),
}

/// A held exclusive lock; dropping it releases the lock.
pub trait VfsLock: Send + Sync + fmt::Debug {}

/// An open file. All offsets are absolute; there is no shared cursor, so one file can be read by
/// several threads while the writer thread appends.
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file when needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// The file's current length (including writes not yet synced).
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: makes the file's data (and the size change) durable.
    fn sync_data(&self) -> io::Result<()>;

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file ended before the expected length",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

/// The file system the engine runs on.
pub trait Vfs: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents (not durable until `sync_dir` of the parent).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>>;
    /// Names (not paths) of the entries of a directory, sorted.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a file (not durable until `sync_dir`).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing the target (not durable until `sync_dir`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// fsync of a directory: makes creations, renames and removals in it durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Takes the exclusive lock of a store (`LOCK` file), writing our pid into it.
    fn lock(&self, path: &Path) -> Result<Box<dyn VfsLock>, LockError>;
    /// Bytes an unprivileged writer can still use on the file system holding `path`;
    /// `None` when unknown (the free-space reserve is then not enforced).
    fn free_bytes(&self, path: &Path) -> io::Result<Option<u64>> {
        let _ = path;
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------------
// The real file system.

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsVfs;

#[derive(Debug)]
struct OsFile(File);

impl VfsFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        self.0.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

#[derive(Debug)]
struct OsLock {
    _file: File,
}
impl VfsLock for OsLock {}

impl Vfs for OsVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                o.write(true);
            }
            OpenMode::Create => {
                o.write(true).create(true);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true);
            }
        }
        Ok(Arc::new(OsFile(o.open(path)?)))
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn free_bytes(&self, path: &Path) -> io::Result<Option<u64>> {
        // statvfs(3) through rustix's safe wrapper: std has no free-space call.
        let s = rustix::fs::statvfs(path)?;
        Ok(Some(s.f_bavail.saturating_mul(s.f_frsize)))
    }
    fn lock(&self, path: &Path) -> Result<Box<dyn VfsLock>, LockError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held { pid });
            }
            Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        // The pid is informational (for the error a second opener sees); it is not durable
        // and need not be.
        file.set_len(0).map_err(LockError::Io)?;
        file.write_all(std::process::id().to_string().as_bytes())
            .map_err(LockError::Io)?;
        Ok(Box::new(OsLock { _file: file }))
    }
}

// ---------------------------------------------------------------------------------------------
// An in-memory file system: everything is "durable" at once. It backs `Store::in_memory()`.

/// A file system held in memory. Cheap to clone (clones share the same files).
#[derive(Debug, Default, Clone)]
pub struct MemVfs {
    inner: Arc<Mutex<MemFs>>,
}

#[derive(Debug, Default)]
struct MemFs {
    dirs: std::collections::BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Arc<MemFile>>,
    locks: std::collections::BTreeSet<PathBuf>,
}

#[derive(Debug, Default)]
struct MemFile {
    data: Mutex<Vec<u8>>,
}

fn lock_poison_free<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the byte vectors half-updated in a
    // way that matters to callers, so a poisoned lock is simply taken over.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemVfs {
    /// An empty in-memory file system.
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug)]
struct MemHandle(Arc<MemFile>);

impl VfsFile for MemHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = lock_poison_free(&self.0.data);
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
        let mut data = lock_poison_free(&self.0.data);
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + buf.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock_poison_free(&self.0.data).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        lock_poison_free(&self.0.data).resize(len, 0);
        Ok(())
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug)]
struct MemLock {
    fs: Arc<Mutex<MemFs>>,
    path: PathBuf,
}
impl VfsLock for MemLock {}
impl Drop for MemLock {
    fn drop(&mut self) {
        lock_poison_free(&self.fs).locks.remove(&self.path);
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

impl Vfs for MemVfs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut fs = lock_poison_free(&self.inner);
        for p in path.ancestors() {
            if !p.as_os_str().is_empty() {
                fs.dirs.insert(p.to_path_buf());
            }
        }
        Ok(())
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        let mut fs = lock_poison_free(&self.inner);
        let parent_ok = path
            .parent()
            .is_none_or(|p| p.as_os_str().is_empty() || fs.dirs.contains(p));
        match (fs.files.get(path), mode) {
            (Some(_), OpenMode::CreateNew) => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: file exists", path.display()),
            )),
            (Some(f), _) => Ok(Arc::new(MemHandle(f.clone()))),
            (None, OpenMode::Create | OpenMode::CreateNew) if parent_ok => {
                let f = Arc::new(MemFile::default());
                fs.files.insert(path.to_path_buf(), f.clone());
                Ok(Arc::new(MemHandle(f)))
            }
            (None, _) => Err(not_found(path)),
        }
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let fs = lock_poison_free(&self.inner);
        if !fs.dirs.contains(path) {
            return Err(not_found(path));
        }
        let mut names: Vec<String> = fs
            .files
            .keys()
            .chain(fs.dirs.iter())
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let fs = lock_poison_free(&self.inner);
        Ok(fs.files.contains_key(path) || fs.dirs.contains(path))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = lock_poison_free(&self.inner);
        fs.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = lock_poison_free(&self.inner);
        let f = fs.files.remove(from).ok_or_else(|| not_found(from))?;
        fs.files.insert(to.to_path_buf(), f);
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let fs = lock_poison_free(&self.inner);
        if fs.dirs.contains(path) {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }
    fn lock(&self, path: &Path) -> Result<Box<dyn VfsLock>, LockError> {
        let mut fs = lock_poison_free(&self.inner);
        if !fs.locks.insert(path.to_path_buf()) {
            return Err(LockError::Held {
                pid: Some(std::process::id()),
            });
        }
        Ok(Box::new(MemLock {
            fs: self.inner.clone(),
            path: path.to_path_buf(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(vfs: &dyn Vfs, dir: &Path) {
        vfs.create_dir_all(dir).unwrap();
        let p = dir.join("a");
        let f = vfs.open(&p, OpenMode::CreateNew).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.write_all_at(b"world", 10).unwrap();
        assert_eq!(f.len().unwrap(), 15);
        let mut buf = [0u8; 15];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"hello\0\0\0\0\0world");
        assert!(vfs.open(&p, OpenMode::CreateNew).is_err());
        vfs.rename(&p, &dir.join("b")).unwrap();
        assert_eq!(vfs.read_dir(dir).unwrap(), vec!["b".to_string()]);
        let lock = vfs.lock(&dir.join("LOCK")).unwrap();
        assert!(matches!(
            vfs.lock(&dir.join("LOCK")),
            Err(LockError::Held { pid: Some(_) })
        ));
        drop(lock);
        vfs.lock(&dir.join("LOCK")).unwrap();
    }

    #[test]
    fn mem_vfs_behaves_like_a_file_system() {
        roundtrip(&MemVfs::new(), Path::new("/store"));
    }

    #[test]
    fn os_vfs_behaves_like_a_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        roundtrip(&OsVfs, &tmp.path().join("store"));
    }
}
