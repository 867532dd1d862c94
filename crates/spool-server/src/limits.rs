//! The ranges of the queue-semantics research, section 8.2, shared by every front end (an
//! argument out of range is `BADARG` on each).

/// Visibility timeout of a lease, ms: 1 ms to 12 h.
pub const VT_MS_MAX: u64 = 12 * 3600 * 1000;
/// Delay of a push or nack, ms: up to 7 days.
pub const DELAY_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// A blocking wait (`QGET ... WAIT`, `TWAIT`, HTTP long-poll), ms: up to 60 s (a longer wait
/// is a client loop).
pub const WAIT_MS_MAX: u64 = 60_000;
/// Messages per read: up to 1000 (bounds one reply).
pub const COUNT_MAX: u64 = 1000;
/// TTL of a message, ms: 1 ms to 30 days (the engine's longest duration).
pub const TTL_MS_MAX: u64 = 30 * 24 * 3600 * 1000;
/// Receipts per ack: bounds one transaction.
pub const ACK_RECEIPTS_MAX: usize = 1000;
