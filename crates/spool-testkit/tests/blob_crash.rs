//! Blob files on the crash simulator. A workload writes a ~3 MiB blob, then a second one, and
//! is cut by a power loss at every operation, under many seeds. In every crash image a blob is
//! either absent from `blob/` (only if its `finish` had not returned `Ok`) or present and
//! byte-identical; a blob whose `finish` returned `Ok` is present in every image. Injected EIO
//! and ENOSPC on any operation make the write fail (never `Ok`), never panic, leave nothing
//! behind, and do not stop the next attempt from being durable.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use spool_engine::blob::{
    self, BlobError, BlobInfo, BlobReader, BlobWriter, BLOB_CHUNK, BLOB_HEADER_LEN,
};
use spool_engine::vfs::Vfs;
use spool_testkit::sim_vfs::{is_power_loss, SplitMix64};
use spool_testkit::{CrashModel, Fault, SimVfs};

const STORE_ID: u64 = 0x5EED_B10B_0000_0001;
/// The ~3 MiB blob: three full chunks and a partial one.
const A: u64 = 1;
const A_LEN: usize = 3 * BLOB_CHUNK + 4097;
/// The blob written after A (one partial chunk), so that crashes hit a store holding a
/// finished blob.
const B: u64 = 2;
const B_LEN: usize = 70_001;
/// Reruns of the workload per crash point, each with its own seed.
const SEEDS: u64 = 10;

fn store() -> PathBuf {
    PathBuf::from("/d/store")
}

/// A file system holding an empty, durable store directory.
fn fresh() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.create_dir_all_durable(&store());
    vfs
}

fn dyn_vfs(vfs: &SimVfs) -> Arc<dyn Vfs> {
    Arc::new(vfs.clone())
}

struct Payloads {
    a: Vec<u8>,
    b: Vec<u8>,
}

fn payloads() -> Payloads {
    let mut rng = SplitMix64::new(0xB10B);
    let mut a = vec![0u8; A_LEN];
    rng.fill(&mut a);
    let mut b = vec![0u8; B_LEN];
    rng.fill(&mut b);
    Payloads { a, b }
}

/// Blob A through `BlobWriter::write`, in pieces that do not line up with chunks.
fn write_a(vfs: &Arc<dyn Vfs>, data: &[u8]) -> Result<BlobInfo, BlobError> {
    let mut w = BlobWriter::create(vfs.clone(), &store(), STORE_ID, A)?;
    for piece in data.chunks(300_007) {
        w.write(piece)?;
    }
    w.finish()
}

/// What the workload saw.
#[derive(Debug, Default)]
struct Outcome {
    /// `finish` of A returned `Ok`.
    a_ok: bool,
    /// `finish` of B returned `Ok`.
    b_ok: bool,
    /// The operation count when A's `finish` returned `Ok`.
    a_done_at: u64,
    /// The first error.
    error: Option<BlobError>,
}

fn workload(vfs: &SimVfs, p: &Payloads) -> Outcome {
    let arc = dyn_vfs(vfs);
    let mut out = Outcome::default();
    match write_a(&arc, &p.a) {
        Ok(info) => {
            assert_eq!(
                info,
                BlobInfo {
                    id: A,
                    len: A_LEN as u64
                }
            );
            out.a_ok = true;
            out.a_done_at = vfs.op_count();
        }
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    }
    match blob::write_blob_from(arc, &store(), STORE_ID, B, &mut &p.b[..]) {
        Ok(info) => {
            assert_eq!(
                info,
                BlobInfo {
                    id: B,
                    len: B_LEN as u64
                }
            );
            out.b_ok = true;
        }
        Err(e) => out.error = Some(e),
    }
    out
}

/// The blob rule on one crash image, then what recovery does (`wipe_tmp`) and that it leaves
/// the blobs alone.
fn check_image(image: &SimVfs, p: &Payloads, a_ok: bool, b_ok: bool, ctx: &str) {
    let arc = dyn_vfs(image);
    let listed = blob::list_blobs(&*arc, &store()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let mut present = Vec::new();
    for (id, data, ok) in [(A, &p.a, a_ok), (B, &p.b, b_ok)] {
        match BlobReader::open(arc.clone(), &store(), STORE_ID, id) {
            Err(BlobError::NotFound { .. }) => {
                assert!(!ok, "{ctx}: blob {id} lost although its finish returned Ok");
            }
            Ok(mut r) => {
                assert_eq!(r.len(), data.len() as u64, "{ctx}: blob {id}");
                let mut got = Vec::with_capacity(data.len());
                r.read_to_end(&mut got)
                    .unwrap_or_else(|e| panic!("{ctx}: blob {id} present but unreadable: {e}"));
                assert!(got == *data, "{ctx}: blob {id} reads back different bytes");
                present.push(id);
            }
            Err(e) => panic!("{ctx}: blob {id} present but refused: {e}"),
        }
    }
    assert_eq!(listed, present, "{ctx}: list_blobs");

    blob::wipe_tmp(&*arc, &store()).unwrap_or_else(|e| panic!("{ctx}: wipe_tmp: {e}"));
    if let Ok(left) = image.read_dir(&blob::tmp_dir(&store())) {
        assert!(left.is_empty(), "{ctx}: tmp/ after wipe_tmp: {left:?}");
    }
    for id in present {
        BlobReader::open(arc.clone(), &store(), STORE_ID, id)
            .unwrap_or_else(|e| panic!("{ctx}: blob {id} after wipe_tmp: {e}"));
    }
}

#[test]
fn a_power_cut_at_any_operation_leaves_each_blob_absent_or_whole() {
    let p = payloads();
    let counting = fresh();
    let full = workload(&counting, &p);
    assert!(full.a_ok && full.b_ok, "{:?}", full.error);
    let total = counting.op_count();
    assert!(total >= 15, "the workload has only {total} operations");

    // A finished run: both blobs in every image, whatever was not synced.
    for seed in 0..16 {
        check_image(&counting.crash_image(seed), &p, true, true, "after the run");
    }
    for model in [CrashModel::lose_all_pending(), CrashModel::process_kill()] {
        let image = counting.crash_image_with(1, &model);
        check_image(&image, &p, true, true, &format!("after the run, {model:?}"));
    }

    // Crash points are independent: spread them over a few threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let absent: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (p, full) = (&p, &full);
                s.spawn(move || {
                    (1..=total)
                        .filter(|n| n % threads == t)
                        .map(|n| crash_at(n, total, full.a_done_at, p))
                        .sum::<usize>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a crash point failed (see above)"))
            .sum()
    });
    assert!(absent > 0, "no crash image lost the unfinished blob");
}

/// Runs the workload with a power cut at operation `n` under every seed and checks the images;
/// returns how many lost blob A.
fn crash_at(n: u64, total: u64, a_done_at: u64, p: &Payloads) -> usize {
    let mut absent = 0;
    for seed in 0..SEEDS {
        let ctx = format!("crash at op {n} of {total}, seed {seed}");
        let vfs = fresh();
        vfs.set_crash_at(n, seed);
        let out = workload(&vfs, p);
        assert!(vfs.is_crashed(), "{ctx}: no crash");
        assert_eq!(out.a_ok, n > a_done_at, "{ctx}");
        assert!(
            !out.b_ok,
            "{ctx}: B finished although the machine died before"
        );
        match &out.error {
            Some(BlobError::Io { source, .. }) if is_power_loss(source) => {}
            other => panic!("{ctx}: expected the power loss, got {other:?}"),
        }
        let image = vfs.take_crash_image().expect("crash image");
        if image.file_bytes(&blob::blob_path(&store(), A)).is_none() {
            absent += 1;
        }
        check_image(&image, p, out.a_ok, out.b_ok, &ctx);

        // Other images of the same instant (without the write that was in flight).
        if seed == 0 {
            for model in [
                CrashModel::lose_all_pending(),
                CrashModel::process_kill(),
                CrashModel::power_loss().with_sector_bytes(4096),
            ] {
                let image = vfs.crash_image_with(100 + n, &model);
                let ctx = format!("{ctx}, another image with {model:?}");
                check_image(&image, p, out.a_ok, out.b_ok, &ctx);
            }
        }
    }
    absent
}

/// Every operation of writing blob A (creating the directories, the file, each chunk, the
/// header, the fdatasync, the rename and the directory fsyncs), failed with `fault`.
fn fail_each_op(fault: Fault) {
    let p = payloads();
    let counting = fresh();
    write_a(&dyn_vfs(&counting), &p.a).unwrap();
    let ops = counting.op_count();

    for n in 1..=ops {
        let ctx = format!("{fault:?} at op {n} of {ops}");
        let vfs = fresh();
        vfs.fail_op(n, fault);
        let arc = dyn_vfs(&vfs);
        let err = match write_a(&arc, &p.a) {
            Ok(info) => panic!("{ctx}: finish returned Ok ({info:?}) although an operation failed"),
            Err(e) => e,
        };
        match &err {
            BlobError::Io { source, .. } => {
                assert_eq!(
                    source.raw_os_error(),
                    fault.to_error().raw_os_error(),
                    "{ctx}: {err}"
                );
            }
            other => panic!("{ctx}: {other}"),
        }
        assert!(!vfs.is_crashed());
        // Nothing left behind: the writer removed its file wherever it was.
        assert_eq!(vfs.list_all(), Vec::<PathBuf>::new(), "{ctx}");

        // After a crash now, A is absent or whole.
        for seed in 0..4 {
            check_image(&vfs.crash_image(seed), &p, false, false, &ctx);
        }

        // The machine lives on: the next attempt succeeds and is durable even if nothing that
        // was not synced survives (a directory whose fsync failed is synced again).
        write_a(&arc, &p.a).unwrap_or_else(|e| panic!("{ctx}: retry: {e}"));
        let image = vfs.crash_image_with(n, &CrashModel::lose_all_pending());
        check_image(&image, &p, true, false, &format!("{ctx}, after the retry"));
    }
}

#[test]
fn eio_on_any_operation_fails_the_write_and_nothing_panics() {
    fail_each_op(Fault::Eio);
}

#[test]
fn enospc_on_any_operation_fails_the_write_and_nothing_panics() {
    fail_each_op(Fault::Enospc);
}

#[test]
fn a_full_disk_fails_the_write_and_frees_the_space() {
    let p = payloads();
    let file_len = blob::blob_file_len(A_LEN as u64);
    for limit in [
        0,
        BLOB_HEADER_LEN as u64,
        BLOB_CHUNK as u64,
        2 * BLOB_CHUNK as u64 + 5,
        file_len - 1,
    ] {
        let ctx = format!("space limit {limit}");
        let vfs = fresh();
        vfs.set_space_limit(limit);
        let arc = dyn_vfs(&vfs);
        match write_a(&arc, &p.a) {
            Ok(_) => panic!("{ctx}: a {file_len}-byte blob file fit"),
            Err(BlobError::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{ctx}");
            }
            Err(e) => panic!("{ctx}: {e}"),
        }
        assert_eq!(
            vfs.list_all(),
            Vec::<PathBuf>::new(),
            "{ctx}: space not freed"
        );
        check_image(&vfs.crash_image(1), &p, false, false, &ctx);
    }
    // Exactly enough room.
    let vfs = fresh();
    vfs.set_space_limit(file_len);
    write_a(&dyn_vfs(&vfs), &p.a).unwrap();
    check_image(
        &vfs.crash_image_with(0, &CrashModel::lose_all_pending()),
        &p,
        true,
        false,
        "exactly enough room",
    );
}

#[test]
fn a_failed_fsync_is_never_retried_into_a_false_success() {
    let p = payloads();
    let vfs = fresh();
    let arc = dyn_vfs(&vfs);
    vfs.fail_sync_once();
    let err = write_a(&arc, &p.a).unwrap_err();
    assert!(matches!(err, BlobError::Io { op: "sync", .. }), "{err}");
    // fsyncgate: the pages of the failed file never reach the disk; a new attempt writes a new
    // file and syncs it.
    write_a(&arc, &p.a).unwrap();
    for seed in 0..8 {
        check_image(&vfs.crash_image(seed), &p, true, false, "after the retry");
    }
    check_image(
        &vfs.crash_image_with(0, &CrashModel::lose_all_pending()),
        &p,
        true,
        false,
        "after the retry, only synced data",
    );
}

#[test]
fn a_writer_refuses_to_go_on_after_a_failed_write() {
    let p = payloads();
    let vfs = fresh();
    let arc = dyn_vfs(&vfs);
    let mut w = BlobWriter::create(arc.clone(), &store(), STORE_ID, A).unwrap();
    // The second chunk's write fails.
    vfs.fail_op(vfs.op_count() + 2, Fault::Eio);
    w.write(&p.a[..BLOB_CHUNK]).unwrap();
    let err = w.write(&p.a[BLOB_CHUNK..2 * BLOB_CHUNK]).unwrap_err();
    assert!(matches!(err, BlobError::Io { op: "write", .. }), "{err}");
    let err = w.write(&p.a[2 * BLOB_CHUNK..]).unwrap_err();
    assert!(matches!(err, BlobError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("write the blob again"), "{err}");
    let err = w.finish().unwrap_err();
    assert!(matches!(err, BlobError::Failed { .. }), "{err}");
    assert_eq!(vfs.list_all(), Vec::<PathBuf>::new());
    assert!(blob::list_blobs(&*arc, &store()).unwrap().is_empty());
}
