//! Pipelined pushes in one engine transaction. A client that pipelines plain `QPUSH q payload`
//! requests to one queue (a producer's burst, `redis-benchmark -P`) has the consecutive ones
//! applied as one batch: one lock, one transaction and one commit to wait for instead of one
//! each, which is most of what a pipelined push costs the server. Each request still gets its
//! own reply (its own id), in order, once the batch is durable.
//!
//! Nothing changes for the client: the requests of a run are consecutive, so no other request
//! of the connection is applied between them, and the batch is applied where the first of them
//! would have been. When the batch as a whole is refused (one payload over the queue's limit,
//! the queue full, a policy refusal) nothing was written, and the run falls back to applying
//! each request alone, in order, before anything after it: every request gets exactly the
//! answer it would have had alone.

use bytes::Bytes;
use spool_engine::Push;
use spool_resp::Frame;

use super::queue::id_frame;
use super::{engine_err, err, start, ConnState, Durable, Reply};
use crate::service::Service;

/// Requests in one run at most (the engine's batch limit is far above this).
const RUN_MAX: usize = 1024;
/// Payload bytes in one run at most (bounds one transaction).
const RUN_BYTES_MAX: usize = 4 << 20;

/// The queue and payload of a plain `QPUSH q payload` (no options), borrowed from `args`.
pub fn plain_push(args: &[Frame]) -> Option<(&Bytes, &Bytes)> {
    match args {
        [Frame::Bulk(cmd), Frame::Bulk(q), Frame::Bulk(p)]
            if cmd.eq_ignore_ascii_case(b"QPUSH") =>
        {
            Some((q, p))
        }
        _ => None,
    }
}

/// Consecutive plain pushes to one queue, not applied yet.
#[derive(Debug)]
pub struct PushRun {
    queue: Bytes,
    /// Each request's arguments (for the one-by-one path).
    requests: Vec<Vec<Frame>>,
    bytes: usize,
}

/// The replies of a started run, in request order.
pub enum Started {
    /// One reply per request (this many), from one batch.
    Batch(
        std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Reply>> + Send>>,
        usize,
    ),
    /// The requests started one by one.
    Each(Vec<Durable>),
}

impl PushRun {
    /// A run of the plain push `args` (see [`plain_push`]).
    pub fn new(args: Vec<Frame>) -> PushRun {
        let (queue, bytes) =
            plain_push(&args).map_or((Bytes::new(), 0), |(q, p)| (q.clone(), p.len()));
        PushRun {
            queue,
            requests: vec![args],
            bytes,
        }
    }

    /// Adds the plain push `args` if it goes to the same queue and the run has room; gives it
    /// back otherwise.
    pub fn try_add(&mut self, args: Vec<Frame>) -> Result<(), Vec<Frame>> {
        let Some((q, p)) = plain_push(&args) else {
            return Err(args);
        };
        if *q != self.queue
            || self.requests.len() >= RUN_MAX
            || self.bytes + p.len() > RUN_BYTES_MAX
        {
            return Err(args);
        }
        self.bytes += p.len();
        self.requests.push(args);
        Ok(())
    }

    /// Applies the run now (one batch, or one by one when the batch is refused) and returns
    /// its replies-to-be.
    pub fn start(self, svc: &Service, conn: &ConnState) -> Started {
        let one_by_one = |requests: Vec<Vec<Frame>>| {
            Started::Each(
                requests
                    .iter()
                    .map(|args| start(svc, conn, args).unwrap_or_else(|| not_started()))
                    .collect(),
            )
        };
        if self.requests.len() == 1 {
            return one_by_one(self.requests);
        }
        // The checks a lone QPUSH makes before it writes (name, permission) are the same for
        // every request of the run: made once, by starting the first request alone when they
        // fail.
        let Ok(queue) = std::str::from_utf8(&self.queue) else {
            return one_by_one(self.requests);
        };
        if spool_engine::name::validate(queue).is_err() || start_refused(svc, conn, queue) {
            return one_by_one(self.requests);
        }
        let msgs: Vec<Push> = self
            .requests
            .iter()
            .filter_map(|a| plain_push(a).map(|(_, p)| Push::new(p.clone())))
            .collect();
        let n = msgs.len();
        let committed = match svc.queue_write(queue, || svc.store().push_batch_async(queue, msgs)) {
            Ok(c) if !c.is_refused() => c,
            // Refused as a whole: nothing was written; each alone gets its own answer.
            Ok(_) | Err(_) => return one_by_one(self.requests),
        };
        Started::Batch(
            Box::pin(async move {
                match committed.await {
                    Ok(ids) if ids.len() == n => ids.into_iter().map(id_frame).collect(),
                    Ok(_) => vec![err("ERR", "the engine returned fewer ids than pushes"); n],
                    Err(e) => vec![engine_err(&e); n],
                }
            }),
            n,
        )
    }
}

/// Whether the permission check of a push to `queue` refuses this connection (the check every
/// command passes, `access::check`).
fn start_refused(svc: &Service, conn: &ConnState, queue: &str) -> bool {
    let name = [Frame::Bulk(Bytes::copy_from_slice(queue.as_bytes()))];
    super::access::check(svc, &conn.identity, "QPUSH", &name).is_err()
}

/// A `QPUSH` always has a start path; should that ever change, say so instead of hanging.
fn not_started() -> Durable {
    super::ready(err(
        "ERR",
        "internal error: a pipelined QPUSH could not be started",
    ))
}
