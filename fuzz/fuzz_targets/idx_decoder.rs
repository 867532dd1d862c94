//! Arbitrary bytes as a sealed-segment index (`log/<seg>.idx`): `SegmentIndex::decode` must
//! never panic; what decodes must re-encode to the very same bytes (the encoding is canonical)
//! and pass `check`; and the streaming validator of `IdxFile::open` must agree with `decode`
//! on every input (same verdict; when both accept, every lane, window, `find` and
//! `lower_bound` agrees with the decoded entries).
//!
//! Each input is also checked with both of its checksums recomputed, so that the rules behind
//! them are fuzzed too.
//!
//! Seeds: with `SPOOL_FUZZ_WRITE_SEEDS=<dir>` this binary writes a few encoded indexes to
//! `<dir>/idx_decoder/`, then the shared seeds (`spool_fuzz::seeds_from_env`) and exits.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use spool_engine::segindex::{
    idx_path, Expect, IdxEntry, IdxError, IdxFile, LaneIndex, LaneKey, SegmentIndex,
};
use spool_engine::vfs::{MemVfs, OpenMode, Vfs};

fuzz_target!(init: write_seeds_from_env(), |data: &[u8]| {
    check(data);
    // Random bytes almost never carry two valid checksums, so the rules behind them (counts,
    // offsets, kinds, key uniqueness, id order) are reached through a copy whose checksums
    // are recomputed.
    if let Some(fixed) = resealed(data) {
        check(&fixed);
    }
});

/// `data` with both checksums recomputed (when it is long enough to have them).
fn resealed(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 68 {
        return None;
    }
    let mut b = data.to_vec();
    let crc = crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    let end = b.len() - 4;
    let crc = crc32c(&b[64..end]);
    b[end..].copy_from_slice(&crc.to_le_bytes());
    Some(b)
}

/// CRC32C (Castagnoli), table-driven: the fuzz crate does not depend on the `crc32c` crate.
/// `check` proves it right on every input that decodes (resealing it changes nothing).
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn check(data: &[u8]) {
    let decoded = SegmentIndex::decode(data);
    if let Ok(idx) = &decoded {
        let again = idx.encode();
        assert_eq!(again, data, "a decoded index re-encodes to other bytes");
        assert_eq!(again.len() as u64, idx.encoded_len());
        if let Err(e) = idx.check() {
            panic!("a decoded index fails check: {e}");
        }
        assert_eq!(
            resealed(data).as_deref(),
            Some(data),
            "crc32c of the fuzz target is wrong"
        );
    } else if let Err(e) = &decoded {
        assert!(
            matches!(e, IdxError::Corrupt { .. }),
            "decode fails with something else than Corrupt: {e:?}"
        );
    }

    // The same bytes as a file, opened with what its own header claims.
    let vfs = MemVfs::new();
    let dir = Path::new("/s/log");
    vfs.create_dir_all(dir).expect("mkdir");
    let expect = expect_of(data);
    let f = vfs
        .open(&idx_path(dir, expect.seg_id), OpenMode::CreateNew)
        .expect("create");
    f.write_all_at(data, 0).expect("write");
    match (IdxFile::open(&vfs, dir, expect), &decoded) {
        (Ok(file), Ok(idx)) => compare(&file, idx),
        (Err(IdxError::Corrupt { .. }), Err(_)) => {}
        (opened, decoded) => panic!(
            "IdxFile::open and SegmentIndex::decode disagree:\n open: {opened:?}\n decode: {decoded:?}"
        ),
    }

    // Another segment length: a valid index is stale, anything else stays corrupt.
    let other = Expect {
        seg_len: expect.seg_len ^ 1,
        ..expect
    };
    match (IdxFile::open(&vfs, dir, other), &decoded) {
        (Err(IdxError::Stale { .. }), Ok(_)) => {}
        (Err(IdxError::Stale { .. } | IdxError::Corrupt { .. }), Err(_)) => {}
        (opened, _) => panic!("opened with the wrong segment length: {opened:?}"),
    }
}

/// What the header (if there is one) says about the segment.
fn expect_of(data: &[u8]) -> Expect {
    let u = |i: usize| {
        data.get(i..i + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    Expect {
        store_id: u(16),
        seg_id: u(24),
        seg_len: u(32),
        last_lsn: u(40),
    }
}

fn compare(file: &IdxFile, idx: &SegmentIndex) {
    assert_eq!(
        (
            file.store_id(),
            file.seg_id(),
            file.seg_len(),
            file.last_lsn()
        ),
        (idx.store_id, idx.seg_id, idx.seg_len, idx.last_lsn)
    );
    assert_eq!(file.lanes().len(), idx.lanes.len());
    assert_eq!(file.total_entries(), idx.total_entries());
    for (m, l) in file.lanes().iter().zip(&idx.lanes) {
        assert_eq!(m.key, l.key);
        assert_eq!(file.lane(l.key), Some(m));
        assert_eq!(idx.lane(l.key), Some(l));
        let n = l.entries.len() as u64;
        assert_eq!(m.n_entries, n);
        assert_eq!(
            file.read_entries(m, 0, usize::MAX).expect("read"),
            l.entries
        );
        // windows of 3
        let mut from = 0;
        while from < n {
            let w = file.read_entries(m, from, 3).expect("read window");
            assert_eq!(
                w[..],
                l.entries[from as usize..(from as usize + 3).min(l.entries.len())]
            );
            from += w.len() as u64;
        }
        for (i, e) in l.entries.iter().enumerate() {
            let i = i as u64;
            assert_eq!(file.find(m, e.id).expect("find"), Some((i, *e)));
            assert_eq!(file.lower_bound(m, e.id).expect("lower_bound"), i);
            let below = e.id.wrapping_sub(1);
            if i > 0 && l.entries[i as usize - 1].id == below {
                continue;
            }
            if e.id > 0 {
                assert_eq!(file.find(m, below).expect("find"), None);
                assert_eq!(file.lower_bound(m, below).expect("lower_bound"), i);
            }
        }
        if let Some(last) = l.entries.last() {
            if last.id < u64::MAX {
                assert_eq!(file.find(m, last.id + 1).expect("find"), None);
                assert_eq!(file.lower_bound(m, last.id + 1).expect("lower_bound"), n);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

fn entry(id: u64) -> IdxEntry {
    IdxEntry {
        id,
        off: (id as u32).wrapping_mul(48).wrapping_add(64),
        len: 48,
        size: 12,
        crc: (id as u32).wrapping_mul(0x9e37_79b9),
        expires_ms: if id % 2 == 0 {
            0
        } else {
            1_700_000_000_000_u64.wrapping_add(id)
        },
        enqueued_ms: id % 3,
    }
}

fn index(lanes: &[(LaneKey, &[u64])]) -> SegmentIndex {
    SegmentIndex {
        store_id: 0x5eed_0001,
        seg_id: 3,
        seg_len: 4096,
        last_lsn: 17,
        lanes: lanes
            .iter()
            .map(|&(key, ids)| LaneIndex {
                key,
                entries: ids.iter().copied().map(entry).collect(),
            })
            .collect(),
    }
}

fn seeds() -> Vec<(&'static str, SegmentIndex)> {
    let q = |queue, prio| LaneKey::Queue { queue, prio };
    let t = |topic| LaneKey::Topic { topic };
    let many: Vec<u64> = (0..60).map(|i| 1000 + 2 * i).collect();
    vec![
        ("empty", index(&[])),
        ("one-entry", index(&[(q(1, 0), &[7])])),
        ("one-lane", index(&[(q(1, 4), &[1, 2, 5, 9])])),
        (
            "mixed",
            index(&[
                (q(1, 9), &[10, 12, 13]),
                (t(2), &[0, 1, 2]),
                (q(1, 0), &[11, 14]),
                (t(5), &[40]),
                (q(3, 255), &[15, u64::MAX]),
            ]),
        ),
        (
            "empty-lanes",
            index(&[(q(2, 1), &[]), (t(1), &[3, 4]), (t(9), &[])]),
        ),
        ("many", index(&[(q(1, 2), &many), (t(3), &many[..20])])),
    ]
}

/// With `SPOOL_FUZZ_WRITE_SEEDS=<dir>`: writes `<dir>/idx_decoder/*` (replacing what was
/// there), then the other targets' seeds, and exits (see `spool_fuzz::seeds_from_env`).
fn write_seeds_from_env() {
    let Some(root) = std::env::var_os("SPOOL_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = Path::new(&root).join("idx_decoder");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let seeds = seeds();
    for (name, idx) in &seeds {
        idx.check().expect("seed index is valid");
        std::fs::write(dir.join(name), idx.encode()).expect("write seed");
    }
    eprintln!(
        "wrote {} idx_decoder seeds under {}",
        seeds.len(),
        dir.display()
    );
    spool_fuzz::seeds_from_env();
}
