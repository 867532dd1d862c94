//! Writes the seed corpora (`<out>/frame_decoder/`, `<out>/recovery_scanner/`) from a real
//! store, so the fuzzers start from real frames and meaningful damage. The seeds are generated
//! rather than checked in so that they always follow the current log format. Run from `fuzz/`:
//!
//!     cargo run --example gen_seeds -- seeds     # the default <out> is fuzz/seeds
//!
//! The fuzz binaries can do the same (`SPOOL_FUZZ_WRITE_SEEDS=<out> <binary>`), which is what
//! `.ci/fuzz-smoke` uses. The output is deterministic.

use std::path::{Path, PathBuf};

fn main() {
    let root = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"),
        PathBuf::from,
    );
    let (a, b) = spool_fuzz::write_seeds(&root);
    println!(
        "wrote {a} frame_decoder seeds and {b} recovery_scanner seeds under {}",
        root.display()
    );
}
