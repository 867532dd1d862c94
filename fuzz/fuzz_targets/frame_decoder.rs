//! Arbitrary bytes as a segment, a frame or a FORMAT file: the frame checker, the resync
//! scanner, the header decoders and the entry decoder must never panic, and every entry that
//! decodes must re-encode to the same bytes and decode to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: spool_fuzz::seeds_from_env(), |data: &[u8]| {
    spool_fuzz::check_log_bytes(data);
});
