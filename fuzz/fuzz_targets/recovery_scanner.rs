//! Damages the segment files of a small real store (overwrite, bit flips, truncation, garbage
//! appended, real frames copied elsewhere, segments removed or cloned: see `parse_ops`) and
//! reopens it with `RecoveryPolicy::Refuse` and `Skip`. Recovery must never panic, never invent
//! a message, leave the log untouched when it refuses, agree between the two policies when
//! there is no damage, and give the same contents when reopened.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(init: spool_fuzz::seeds_from_env(), |data: &[u8]| {
    spool_fuzz::check_recovery(data);
});
