//! The engine against the reference model, without crashes: random sequences of every queue
//! and topic operation, clock jumps and clean reopens run against a real [`Store`] (on an
//! in-memory file system with a manual clock) and against [`Model`]; every answer (ids,
//! payloads, order, receive counts, error kinds) and the whole state after every step must
//! agree. Then a few deterministic tests of subtle paths.
//!
//! `PROPTEST_CASES` sets the number of random cases (default 256).

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use spool_engine::vfs::MemVfs;
use spool_engine::{
    Clock, Cursor, CursorStart, Durability, ManualClock, Options, Overflow, Push, QueueConfig,
    Receipt, Store, TopicConfig,
};
use spool_testkit::model::{kind, snapshot_store, ErrorKind, Model, ModelResult};

/// Start of the manual clock (any realistic Unix time in ms).
const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// Payload limit of the queues and topics the tests create: small, so that a few generated
/// payloads go over it.
const SMALL_PAYLOAD_MAX: usize = 16;
/// Cursor slots a test keeps.
const CURSOR_SLOTS: usize = 3;
/// A known limitation, not a bug to find (see ARCHITECTURE.md, "time"): a time transition seen
/// only by a read (a delay ending, a topic message aging out) is not logged, so if the clock
/// goes back across a restart it can be seen again later. A reopen therefore first moves the
/// clock forward to the latest time the test showed. The two `*_behind_the_clock` tests
/// document the behaviour.
const WORK_AROUND_CLOCK_REWIND_ACROSS_REOPEN: bool = true;

// --- operations -----------------------------------------------------------------------------

/// A receipt (or id) handed out earlier: `idx` picks one (when `live`, among those whose
/// message is still in its queue), `forge` shifts its generation (0 most of the time),
/// `queue` sends it to another queue than its own.
#[derive(Debug, Clone)]
struct Pick {
    live: bool,
    idx: usize,
    forge: i8,
    queue: Option<&'static str>,
}

/// Which form of a call to use: the plain one, its `*_async` future, or its blocking `*_wait`
/// form with a zero timeout (all must answer the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Sync,
    Async,
    Wait,
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    /// The clock jumps back (a device without a real-time clock).
    Rewind(u64),
    Reopen,
    CreateQueue(&'static str, QueueConfig),
    ConfigureQueue(&'static str, QueueConfig),
    DropQueue(&'static str),
    Push(&'static str, Push, Call),
    PushBatch(&'static str, Vec<Push>, Call),
    Lease(&'static str, usize, Option<u64>, Call),
    Ack(Pick),
    AckBatch(Vec<Pick>, Call),
    Nack(Pick, u64, Option<u8>),
    Extend(Pick, u64),
    Dead(Pick),
    Redrive(&'static str, usize),
    Pop(&'static str, usize),
    Peek(&'static str, usize),
    Get(Pick),
    Delete(Pick),
    Purge(&'static str),
    CreateTopic(&'static str, TopicConfig),
    ConfigureTopic(&'static str, TopicConfig),
    DropTopic(&'static str),
    Publish(&'static str, Vec<u8>, Call),
    PublishBatch(&'static str, Vec<Vec<u8>>),
    Subscribe(usize, &'static str),
    CursorAt(usize, &'static str, u64),
    DurableCursor(usize, &'static str, &'static str, CursorStart),
    CommitCursor(usize),
    Next(usize, Call),
    Latest(usize),
}

/// Store options that vary between cases (the model is told of `auto_create`; durability and
/// segment size must not change any answer).
#[derive(Debug, Clone)]
struct Setup {
    auto_create: bool,
    durability: Durability,
    /// Small segments make the log roll over often (4096 is the engine's minimum).
    segment_bytes: u64,
}

fn setup() -> impl Strategy<Value = Setup> {
    let durability = prop_oneof![
        3 => Just(Durability::Sync),
        1 => Just(Durability::Interval(5)),
        1 => Just(Durability::None),
    ];
    let segment_bytes = prop_oneof![Just(4096u64), Just(64 << 10), Just(64 << 20)];
    (prop::bool::weighted(0.85), durability, segment_bytes).prop_map(
        |(auto_create, durability, segment_bytes)| Setup {
            auto_create,
            durability,
            segment_bytes,
        },
    )
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            auto_create: true,
            durability: Durability::Sync,
            segment_bytes: Options::default().segment_bytes,
        }
    }
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![6 => Just(Call::Sync), 1 => Just(Call::Async), 1 => Just(Call::Wait)]
}

/// Runs a future to completion on this thread (the engine's futures need no runtime: the
/// writer thread wakes them).
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn queue_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        12 => prop::sample::select(vec!["a", "b"]),
        2 => Just("c"),
        3 => prop::sample::select(vec!["a.dlq", "b.dlq", "dead"]),
        1 => Just("not a name"),
    ]
}

fn dlq_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => prop::sample::select(vec!["a.dlq", "b.dlq", "dead"]), 1 => queue_name()]
}

fn topic_name() -> impl Strategy<Value = &'static str> {
    prop_oneof![10 => prop::sample::select(vec!["t", "u"]), 1 => Just("bad/topic")]
}

fn queue_config() -> impl Strategy<Value = QueueConfig> {
    let visibility = prop_oneof![30 => 1u64..=5_000, 1 => Just(0u64)];
    let delay = prop_oneof![4 => Just(0u64), 1 => 1u64..=3_000];
    let retention = prop_oneof![2 => Just(None), 1 => (2_000u64..=60_000).prop_map(Some)];
    let max_receives = prop_oneof![4 => Just(0u32), 1 => Just(1u32), 4 => 2u32..=3];
    let dlq = prop_oneof![8 => Just(None), 2 => Just(Some("dead")), 1 => Just(Some("a"))];
    let max_messages = prop_oneof![Just(0u64), 2u64..=5];
    let max_bytes = prop_oneof![2 => Just(0u64), 1 => 8u64..=40];
    let overflow = prop_oneof![Just(Overflow::Reject), Just(Overflow::EvictLowestPriority)];
    (
        visibility,
        delay,
        retention,
        max_receives,
        dlq,
        max_messages,
        max_bytes,
        overflow,
    )
        .prop_map(
            |(vis, delay, retention, max_receives, dlq, max_messages, max_bytes, overflow)| {
                QueueConfig {
                    visibility: Duration::from_millis(vis),
                    delay: Duration::from_millis(delay),
                    retention: retention.map(Duration::from_millis),
                    max_receives,
                    dead_letter_queue: dlq.map(str::to_string),
                    max_messages,
                    max_bytes,
                    overflow,
                    max_payload_bytes: SMALL_PAYLOAD_MAX,
                    max_in_flight: 0,
                }
            },
        )
}

fn topic_config() -> impl Strategy<Value = TopicConfig> {
    let retention = prop_oneof![3 => 1_000u64..=10_000, 1 => Just(600_000u64)];
    let max_messages = prop_oneof![Just(0u64), 2u64..=5];
    let max_bytes = prop_oneof![2 => Just(0u64), 1 => 6u64..=30];
    (retention, max_messages, max_bytes).prop_map(|(retention, max_messages, max_bytes)| {
        TopicConfig {
            retention: Duration::from_millis(retention),
            max_messages,
            max_bytes,
            max_payload_bytes: SMALL_PAYLOAD_MAX,
        }
    })
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        20 => prop::collection::vec(any::<u8>(), 0..=6),
        1 => prop::collection::vec(any::<u8>(), SMALL_PAYLOAD_MAX + 1..=SMALL_PAYLOAD_MAX + 4),
    ]
}

fn push_msg() -> impl Strategy<Value = Push> {
    let delay =
        prop_oneof![6 => Just(None), 1 => Just(Some(0u64)), 2 => (1u64..=3_000).prop_map(Some)];
    let ttl =
        prop_oneof![6 => Just(None), 1 => Just(Some(0u64)), 2 => (1u64..=6_000).prop_map(Some)];
    let subject = prop_oneof![4 => Just(None), 1 => Just(Some("s/1"))];
    (
        payload(),
        0u8..=3,
        delay,
        ttl,
        subject,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(payload, priority, delay, ttl, subject, header)| {
            let mut p = Push::new(payload).priority(priority);
            p.delay = delay.map(Duration::from_millis);
            p.ttl = ttl.map(Duration::from_millis);
            p.subject = subject.map(str::to_string);
            if header {
                p = p.header("k", "v");
            }
            p
        })
}

fn pick() -> impl Strategy<Value = Pick> {
    let forge = prop_oneof![12 => Just(0i8), 1 => Just(1i8), 1 => Just(-1i8)];
    let queue = prop_oneof![12 => Just(None), 1 => queue_name().prop_map(Some)];
    (prop::bool::weighted(0.9), any::<usize>(), forge, queue).prop_map(
        |(live, idx, forge, queue)| Pick {
            live,
            idx,
            forge,
            queue,
        },
    )
}

fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![
        30 => 0u64..=2_500,
        10 => 2_500u64..=40_000,
        1 => DAY_MS..=6 * DAY_MS,
    ]
}

fn count() -> impl Strategy<Value = usize> {
    prop_oneof![40 => 1usize..=4, 1 => Just(0usize)]
}

fn cursor_start() -> impl Strategy<Value = CursorStart> {
    prop_oneof![
        Just(CursorStart::Now),
        Just(CursorStart::Earliest),
        (0u64..=12).prop_map(CursorStart::Seq),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let slot = 0..CURSOR_SLOTS;
    let lease_vis =
        prop_oneof![6 => Just(None), 12 => (1u64..=4_000).prop_map(Some), 1 => Just(Some(0))];
    let nack_delay = prop_oneof![3 => Just(0u64), 3 => 1u64..=3_000, 1 => Just(31 * DAY_MS)];
    let nack_prio = prop_oneof![Just(None), (0u8..=4).prop_map(Some)];
    let extend_vis = prop_oneof![10 => 1u64..=5_000, 1 => Just(0u64)];
    let cursor_name = prop::sample::select(vec!["c1", "c2"]);
    prop_oneof![
        20 => advance().prop_map(Op::Advance),
        1 => (0u64..=60_000).prop_map(Op::Rewind),
        2 => Just(Op::Reopen),
        // Queues.
        2 => (queue_name(), queue_config()).prop_map(|(q, c)| Op::CreateQueue(q, c)),
        4 => (queue_name(), queue_config()).prop_map(|(q, c)| Op::ConfigureQueue(q, c)),
        1 => dlq_name().prop_map(Op::DropQueue),
        32 => (queue_name(), push_msg(), call()).prop_map(|(q, m, c)| Op::Push(q, m, c)),
        6 => (queue_name(), prop::collection::vec(push_msg(), 0..=4), call())
            .prop_map(|(q, m, c)| Op::PushBatch(q, m, c)),
        24 => (queue_name(), count(), lease_vis, call())
            .prop_map(|(q, n, v, c)| Op::Lease(q, n, v, c)),
        10 => pick().prop_map(Op::Ack),
        2 => (prop::collection::vec(pick(), 1..=3), call()).prop_map(|(p, c)| Op::AckBatch(p, c)),
        12 => (pick(), nack_delay, nack_prio).prop_map(|(p, d, prio)| Op::Nack(p, d, prio)),
        4 => (pick(), extend_vis).prop_map(|(p, v)| Op::Extend(p, v)),
        6 => pick().prop_map(Op::Dead),
        6 => (dlq_name(), count()).prop_map(|(q, n)| Op::Redrive(q, n)),
        3 => (queue_name(), count()).prop_map(|(q, n)| Op::Pop(q, n)),
        3 => (queue_name(), count()).prop_map(|(q, n)| Op::Peek(q, n)),
        3 => pick().prop_map(Op::Get),
        2 => pick().prop_map(Op::Delete),
        1 => queue_name().prop_map(Op::Purge),
        // Topics.
        2 => (topic_name(), topic_config()).prop_map(|(t, c)| Op::CreateTopic(t, c)),
        2 => (topic_name(), topic_config()).prop_map(|(t, c)| Op::ConfigureTopic(t, c)),
        1 => topic_name().prop_map(Op::DropTopic),
        10 => (topic_name(), payload(), call()).prop_map(|(t, p, c)| Op::Publish(t, p, c)),
        2 => (topic_name(), prop::collection::vec(payload(), 0..=3))
            .prop_map(|(t, p)| Op::PublishBatch(t, p)),
        4 => (slot.clone(), topic_name()).prop_map(|(s, t)| Op::Subscribe(s, t)),
        2 => (slot.clone(), topic_name(), 0u64..=12).prop_map(|(s, t, q)| Op::CursorAt(s, t, q)),
        4 => (slot.clone(), topic_name(), cursor_name, cursor_start())
            .prop_map(|(s, t, c, st)| Op::DurableCursor(s, t, c, st)),
        4 => slot.clone().prop_map(Op::CommitCursor),
        8 => (slot.clone(), call()).prop_map(|(s, c)| Op::Next(s, c)),
        2 => slot.prop_map(Op::Latest),
    ]
}

// --- the harness ----------------------------------------------------------------------------

/// A store and the model side by side, with what the test handed out so far.
struct Harness {
    setup: Setup,
    vfs: Arc<MemVfs>,
    clock: ManualClock,
    store: Option<Store>,
    model: Model,
    /// Receipts handed out by leases, with their queue.
    receipts: Vec<(&'static str, Receipt)>,
    /// Message ids handed out (pushes, leases, dead letters), with their queue.
    ids: Vec<(&'static str, u64)>,
    /// Cursors: the store's and the model's (equal unless a test fails).
    cursors: [Option<(Cursor, Cursor)>; CURSOR_SLOTS],
    step: usize,
    /// The latest time the clock showed.
    latest_ms: u64,
}

fn agree<T: PartialEq + Debug>(
    ctx: &str,
    store: spool_engine::Result<T>,
    model: ModelResult<T>,
) -> Result<Option<T>, TestCaseError> {
    let store = store.map_err(|e| kind(&e));
    prop_assert_eq!(&store, &model, "{}", ctx);
    Ok(store.ok())
}

/// The name of a dead-letter queue a message may land in, for the bookkeeping of ids.
fn static_name(name: &str) -> &'static str {
    ["a", "b", "c", "a.dlq", "b.dlq", "c.dlq", "dead"]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("unknown")
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let clock = ManualClock::new(T0);
        let vfs = Arc::new(MemVfs::new());
        let options = Self::options_with(&setup, &clock);
        let store = Store::open_with_vfs(vfs.clone(), "/s", options.clone()).expect("open");
        let mut model = Model::new(&options);
        model.tick(T0);
        Self {
            setup,
            vfs,
            clock,
            store: Some(store),
            model,
            receipts: Vec::new(),
            ids: Vec::new(),
            cursors: Default::default(),
            step: 0,
            latest_ms: T0,
        }
    }

    fn options_with(setup: &Setup, clock: &ManualClock) -> Options {
        Options {
            clock: Arc::new(clock.clone()),
            auto_create: setup.auto_create,
            durability: setup.durability,
            segment_bytes: setup.segment_bytes,
            maintenance: spool_engine::Maintenance::Manual,
            segment_prep: spool_engine::SegmentPrep::Inline,
            ..Options::default()
        }
    }

    fn store(&self) -> Store {
        self.store.clone().expect("the store is open")
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn reopen(&mut self) -> Result<(), TestCaseError> {
        let store = self.store.take().expect("the store is open");
        prop_assert!(store.close().is_ok(), "close");
        let options = Self::options_with(&self.setup, &self.clock);
        let store = Store::open_with_vfs(self.vfs.clone(), "/s", options);
        prop_assert!(store.is_ok(), "reopen: {:?}", store.err());
        self.store = store.ok();
        self.model.restart();
        Ok(())
    }

    /// The entry of `list` that `p` picks.
    fn choose<T: Copy>(
        &self,
        p: &Pick,
        list: &[(&'static str, T)],
        id: impl Fn(T) -> u64,
    ) -> Option<(&'static str, T)> {
        let live: Vec<(&'static str, T)> = if p.live {
            list.iter()
                .copied()
                .filter(|&(q, x)| self.model.contains(q, id(x)))
                .collect()
        } else {
            Vec::new()
        };
        let from = if live.is_empty() { list } else { &live[..] };
        (!from.is_empty()).then(|| from[p.idx % from.len()])
    }

    fn receipt(&self, p: &Pick) -> (&'static str, Receipt) {
        let first = Receipt {
            id: 1,
            generation: 1,
        };
        let (q, r) = self
            .choose(p, &self.receipts, |r| r.id)
            .unwrap_or(("a", first));
        let generation = (i64::from(r.generation) + i64::from(p.forge)).max(0) as u32;
        (
            p.queue.unwrap_or(q),
            Receipt {
                id: r.id,
                generation,
            },
        )
    }

    fn id(&self, p: &Pick) -> (&'static str, u64) {
        let (q, id) = self.choose(p, &self.ids, |id| id).unwrap_or(("a", 1));
        let id = id.saturating_add_signed(i64::from(p.forge));
        (p.queue.unwrap_or(q), id)
    }

    fn run(&mut self, ops: &[Op]) -> Result<(), TestCaseError> {
        self.check_state()?;
        for op in ops {
            self.apply(op)?;
        }
        Ok(())
    }

    /// Applies one operation to both sides, compares the answers, then the whole state.
    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        self.step += 1;
        let ctx = format!("step {}: {op:?}", self.step);
        if let Op::Advance(ms) | Op::Rewind(ms) = op {
            if let Op::Advance(_) = op {
                self.clock.advance(*ms);
            } else {
                self.clock.set(self.now().saturating_sub(*ms));
            }
            self.model.tick(self.now());
            self.latest_ms = self.latest_ms.max(self.now());
            return self.check_state();
        }
        if let Op::Reopen = op {
            if WORK_AROUND_CLOCK_REWIND_ACROSS_REOPEN && self.now() < self.latest_ms {
                self.clock.set(self.latest_ms);
                self.model.tick(self.latest_ms);
            }
            self.reopen()?;
            return self.check_state();
        }
        let s = self.store();
        let now = self.now();
        let m = &mut self.model;
        match op {
            Op::Advance(_) | Op::Rewind(_) | Op::Reopen => unreachable!("handled above"),
            Op::CreateQueue(q, c) => {
                agree(
                    &ctx,
                    s.create_queue(q, c.clone()),
                    m.create_queue(now, q, c.clone()),
                )?;
            }
            Op::ConfigureQueue(q, c) => {
                agree(
                    &ctx,
                    s.configure_queue(q, c.clone()),
                    m.configure_queue(now, q, c.clone()),
                )?;
            }
            Op::DropQueue(q) => {
                agree(&ctx, s.drop_queue(q), m.drop_queue(now, q))?;
            }
            Op::Push(q, p, c) => {
                let got = match c {
                    Call::Async => block_on(s.push_async(q, p.clone())).map(|ids| ids[0]),
                    Call::Sync | Call::Wait => s.push(q, p.clone()),
                };
                if let Some(id) = agree(&ctx, got, m.push(now, q, p.clone()))? {
                    self.ids.push((q, id));
                }
            }
            Op::PushBatch(q, ps, c) => {
                let got = match c {
                    Call::Async => block_on(s.push_batch_async(q, ps.clone())),
                    Call::Sync | Call::Wait => s.push_batch(q, ps.clone()),
                };
                if let Some(ids) = agree(&ctx, got, m.push_batch(now, q, ps.clone()))? {
                    self.ids.extend(ids.into_iter().map(|id| (*q, id)));
                }
            }
            Op::Lease(q, n, vis, c) => {
                let vis = vis.map(Duration::from_millis);
                let got = match c {
                    Call::Sync => s.lease(q, *n, vis),
                    Call::Async => block_on(s.lease_async(q, *n, vis)),
                    Call::Wait => s.lease_wait(q, *n, vis, Duration::ZERO),
                };
                let want = match c {
                    Call::Wait => m.lease_wait(now, q, *n, vis),
                    Call::Sync | Call::Async => m.lease(now, q, *n, vis),
                };
                if let Some(msgs) = agree(&ctx, got, want)? {
                    for msg in msgs {
                        self.ids.push((q, msg.id));
                        if let Some(r) = msg.receipt {
                            self.receipts.push((q, r));
                        }
                    }
                }
            }
            Op::Ack(p) => {
                let (q, r) = self.receipt(p);
                agree(&ctx, s.ack(q, r), self.model.ack(now, q, r))?;
            }
            Op::AckBatch(ps, c) => {
                let picked: Vec<_> = ps.iter().map(|p| self.receipt(p)).collect();
                let q = picked[0].0;
                let rs: Vec<Receipt> = picked.iter().map(|(_, r)| *r).collect();
                let got = match c {
                    Call::Async => block_on(s.ack_batch_async(q, &rs)),
                    Call::Sync | Call::Wait => s.ack_batch(q, &rs),
                };
                let got = got.map(|v| {
                    v.into_iter()
                        .map(|r| r.map_err(|e| kind(&e)))
                        .collect::<Vec<_>>()
                });
                let got = got.map_err(|e| kind(&e));
                prop_assert_eq!(got, self.model.ack_batch(now, q, &rs), "{}", ctx);
            }
            Op::Nack(p, delay, prio) => {
                let (q, r) = self.receipt(p);
                let d = Duration::from_millis(*delay);
                agree(
                    &ctx,
                    s.nack(q, r, d, *prio),
                    self.model.nack(now, q, r, d, *prio),
                )?;
            }
            Op::Extend(p, vis) => {
                let (q, r) = self.receipt(p);
                let v = Duration::from_millis(*vis);
                agree(&ctx, s.extend(q, r, v), self.model.extend(now, q, r, v))?;
            }
            Op::Dead(p) => {
                let (q, r) = self.receipt(p);
                if let Some(id) = agree(&ctx, s.dead(q, r), self.model.dead(now, q, r))? {
                    let dlq = s.stats(q).ok().and_then(|st| st.dead_letter_queue);
                    self.ids
                        .push((static_name(dlq.as_deref().unwrap_or("")), id));
                }
            }
            Op::Redrive(q, n) => {
                agree(&ctx, s.redrive(q, *n), m.redrive(now, q, *n))?;
            }
            Op::Pop(q, n) => {
                agree(&ctx, s.pop(q, *n), m.pop(now, q, *n))?;
            }
            Op::Peek(q, n) => {
                agree(&ctx, s.peek(q, *n), m.peek(now, q, *n))?;
            }
            Op::Get(p) => {
                let (q, id) = self.id(p);
                agree(&ctx, s.get(q, id), self.model.get(now, q, id))?;
            }
            Op::Delete(p) => {
                let (q, id) = self.id(p);
                agree(&ctx, s.delete(q, id), self.model.delete(now, q, id))?;
            }
            Op::Purge(q) => {
                agree(&ctx, s.purge(q), m.purge(now, q))?;
            }
            Op::CreateTopic(t, c) => {
                agree(
                    &ctx,
                    s.create_topic(t, c.clone()),
                    m.create_topic(now, t, c.clone()),
                )?;
            }
            Op::ConfigureTopic(t, c) => {
                let c = c.clone();
                agree(
                    &ctx,
                    s.configure_topic(t, c.clone()),
                    m.configure_topic(now, t, c),
                )?;
            }
            Op::DropTopic(t) => {
                agree(&ctx, s.drop_topic(t), m.drop_topic(now, t))?;
            }
            Op::Publish(t, p, c) => {
                let got = match c {
                    Call::Async => block_on(s.publish_async(t, p.clone())).map(|seqs| seqs[0]),
                    Call::Sync | Call::Wait => s.publish(t, p.clone()),
                };
                agree(&ctx, got, m.publish(now, t, p.clone()))?;
            }
            Op::PublishBatch(t, ps) => {
                let ps: Vec<Bytes> = ps.iter().cloned().map(Bytes::from).collect();
                agree(
                    &ctx,
                    s.publish_batch(t, ps.clone()),
                    m.publish_batch(now, t, ps),
                )?;
            }
            Op::Subscribe(slot, t) => {
                let got = agree(&ctx, s.subscribe(t), m.subscribe(now, t))?;
                self.cursors[*slot] = got.map(|c| (c.clone(), c));
            }
            Op::CursorAt(slot, t, seq) => {
                let got = agree(&ctx, s.cursor_at(t, *seq), m.cursor_at(now, t, *seq))?;
                self.cursors[*slot] = got.map(|c| (c.clone(), c));
            }
            Op::DurableCursor(slot, t, name, start) => {
                let got = agree(
                    &ctx,
                    s.durable_cursor(t, name, *start),
                    m.durable_cursor(now, t, name, *start),
                )?;
                self.cursors[*slot] = got.map(|c| (c.clone(), c));
            }
            Op::CommitCursor(slot) => {
                if let Some((sc, mc)) = &self.cursors[*slot] {
                    agree(&ctx, s.commit_cursor(sc), self.model.commit_cursor(now, mc))?;
                }
            }
            Op::Next(slot, _) | Op::Latest(slot) => {
                if let Some((sc, mc)) = &mut self.cursors[*slot] {
                    let (got, want) = match op {
                        Op::Latest(_) => (s.topic_latest(sc), self.model.topic_latest(now, mc)),
                        Op::Next(_, Call::Wait) => (
                            s.topic_wait(sc, Duration::ZERO),
                            self.model.topic_next(now, mc),
                        ),
                        _ => (s.topic_next(sc), self.model.topic_next(now, mc)),
                    };
                    agree(&ctx, got, want)?;
                    prop_assert_eq!(&*sc, &*mc, "{}: cursors", ctx);
                }
            }
        }
        drop(s);
        self.check_state()
    }

    /// Compares everything observable: the snapshots, every message in full, every stats.
    fn check_state(&mut self) -> Result<(), TestCaseError> {
        let ctx = format!("after step {}", self.step);
        let s = self.store();
        let now = self.now();
        prop_assert_eq!(s.queues(), self.model.queues(), "{}: queues", ctx);
        prop_assert_eq!(s.topics(), self.model.topics(), "{}: topics", ctx);
        for q in s.queues() {
            let qctx = format!("{ctx}: queue {q}");
            agree(&qctx, s.messages(&q), self.model.messages(now, &q))?;
            agree(&qctx, s.stats(&q), self.model.stats(now, &q))?;
        }
        for t in s.topics() {
            agree(
                &format!("{ctx}: topic {t}"),
                s.topic_stats(&t),
                self.model.topic_stats(now, &t),
            )?;
        }
        prop_assert_eq!(
            snapshot_store(&s),
            self.model.snapshot(),
            "{}: snapshot",
            ctx
        );
        Ok(())
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures print their shrunk operation list; no regression files are written into
        // the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_agrees_with_model(
        setup in setup(),
        a in queue_config(),
        b in queue_config(),
        t in topic_config(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        // Most cases start with configured queues and a topic (auto-created ones get the
        // defaults, with 30 s leases and no limits, and exist before any create could run).
        let first = [Op::CreateQueue("a", a), Op::CreateQueue("b", b), Op::CreateTopic("t", t)];
        Harness::new(setup).run(&[&first[..], &ops[..]].concat())?;
    }
}

// --- deterministic tests of subtle paths ---------------------------------------------------

fn run(ops: &[Op]) -> Harness {
    let mut h = Harness::new(Setup::default());
    if let Err(e) = h.run(ops) {
        panic!("{e}");
    }
    h
}

fn small_queue(max_receives: u32) -> QueueConfig {
    QueueConfig {
        visibility: Duration::from_secs(5),
        max_receives,
        ..QueueConfig::default()
    }
}

fn first_pick() -> Pick {
    nth_pick(0)
}

fn nth_pick(idx: usize) -> Pick {
    Pick {
        live: false,
        idx,
        forge: 0,
        queue: None,
    }
}

#[test]
fn nack_with_new_priority_changes_the_lease_order() {
    let h = run(&[
        Op::Push("a", Push::new("low").priority(0), Call::Sync),
        Op::Push("a", Push::new("high").priority(2), Call::Sync),
        Op::Push("a", Push::new("mid").priority(1), Call::Sync),
        // Leases "high" (receipt 0), then nacks it down to priority 0: it now comes after
        // "mid" and after "low" (same priority, lower id).
        Op::Lease("a", 1, None, Call::Sync),
        Op::Nack(first_pick(), 0, Some(0)),
        Op::Peek("a", 4),
        // Leases "mid" (receipt 1) and nacks it up to priority 4: first again.
        Op::Lease("a", 1, None, Call::Sync),
        Op::Nack(nth_pick(1), 0, Some(4)),
        Op::Lease("a", 4, None, Call::Sync),
    ]);
    let order: Vec<Bytes> = h
        .store()
        .messages("a")
        .unwrap()
        .into_iter()
        .map(|m| m.payload)
        .collect();
    assert_eq!(
        order,
        ["low", "high", "mid"].map(|s| Bytes::from_static(s.as_bytes()))
    );
    let last_lease = &h.ids[h.ids.len() - 3..];
    assert_eq!(last_lease, [("a", 3), ("a", 1), ("a", 2)], "mid, low, high");
    let mut m = h.model.clone();
    let stats = m.stats(h.now(), "a").unwrap();
    assert_eq!(stats.leased, 3);
    let leased = h.store().messages("a").unwrap();
    let counts: Vec<(u8, u32)> = leased
        .iter()
        .map(|m| (m.priority, m.receive_count))
        .collect();
    assert_eq!(counts, [(0, 1), (0, 2), (4, 2)]);
}

#[test]
fn dead_letter_after_max_receives_across_a_reopen() {
    let mut h = run(&[
        Op::CreateQueue("a", small_queue(2)),
        Op::Push("a", Push::new("poison"), Call::Sync),
        Op::Lease("a", 1, None, Call::Sync),
        Op::Advance(5_000),
        Op::Lease("a", 1, None, Call::Sync),
        // Leased at the restart: released with its count of 2.
        Op::Reopen,
        Op::Lease("a", 1, None, Call::Sync),
    ]);
    let s = h.store();
    assert!(s.messages("a").unwrap().is_empty());
    let dead = s.messages("a.dlq").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, 2, "a move takes the next store-wide id");
    assert_eq!(dead[0].receive_count, 2);
    assert_eq!(dead[0].dead_letter_of, Some(("a".to_string(), 1)));
    assert_eq!(s.stats("a").unwrap().counters.dead_lettered, 1);
    assert_eq!(s.stats("a").unwrap().dead, 1);
    // The last receipt of the source message is gone with it.
    h.apply(&Op::Ack(nth_pick(1))).unwrap();
    assert_eq!(
        h.model.clone().ack(h.now(), "a", h.receipts[1].1),
        Err(ErrorKind::NotFound)
    );
    // Another reopen changes nothing.
    drop(s);
    h.apply(&Op::Reopen).unwrap();
    assert_eq!(h.store().messages("a.dlq").unwrap(), dead);
}

#[test]
fn eviction_takes_the_oldest_of_the_lowest_priority_and_never_a_leased_or_higher_one() {
    let cfg = QueueConfig {
        max_messages: 3,
        overflow: Overflow::EvictLowestPriority,
        ..QueueConfig::default()
    };
    let h = run(&[
        Op::CreateQueue("a", cfg),
        Op::Push("a", Push::new("p1").priority(1), Call::Sync), // id 1
        Op::Push("a", Push::new("p0-old").priority(0), Call::Sync), // id 2
        Op::Push("a", Push::new("p0-new").priority(0), Call::Sync), // id 3
        // Full: a priority-1 push evicts the oldest priority-0 message (2).
        Op::Push("a", Push::new("p1-b").priority(1), Call::Sync), // id 4
        // A priority-0 push may only evict priority 0: message 3 goes.
        Op::Push("a", Push::new("p0-c").priority(0), Call::Sync), // id 5
        // Lease all three (1 and 4 of priority 1, then 5).
        Op::Lease("a", 3, None, Call::Sync),
        // Nothing ready remains: a push must fail, evicting nothing (leased are kept).
        Op::Push("a", Push::new("p3").priority(3), Call::Sync),
        // Message 1 is ready again; a priority-2 push evicts it, the only candidate.
        Op::Nack(first_pick(), 0, None),
        Op::Push("a", Push::new("p2").priority(2), Call::Sync), // id 6
    ]);
    let s = h.store();
    let left: Vec<u64> = s.messages("a").unwrap().iter().map(|m| m.id).collect();
    assert_eq!(left, [4, 5, 6]);
    let st = s.stats("a").unwrap();
    assert_eq!(st.counters.evicted, 3);
    assert_eq!(st.counters.rejected_full, 1);
}

#[test]
fn eviction_never_takes_a_higher_priority_than_the_lowest_pushed() {
    let cfg = QueueConfig {
        max_messages: 2,
        overflow: Overflow::EvictLowestPriority,
        ..QueueConfig::default()
    };
    let h = run(&[
        Op::CreateQueue("a", cfg),
        Op::Push("a", Push::new("x").priority(2), Call::Sync),
        Op::Push("a", Push::new("y").priority(1), Call::Sync),
        // A batch whose lowest priority is 0: nothing of priority <= 0 to evict.
        Op::PushBatch(
            "a",
            vec![Push::new("z").priority(3), Push::new("w").priority(0)],
            Call::Sync,
        ),
        // Priority 1 may evict "y" only, which is not enough for two.
        Op::PushBatch(
            "a",
            vec![Push::new("z").priority(3), Push::new("w").priority(1)],
            Call::Sync,
        ),
        // One message of priority 1 evicts "y".
        Op::Push("a", Push::new("v").priority(1), Call::Sync),
    ]);
    let st = h.store().stats("a").unwrap();
    assert_eq!(st.counters.evicted, 1);
    assert_eq!(st.counters.rejected_full, 4);
    assert_eq!(st.counters.pushed, 3);
}

#[test]
fn redrive_gives_new_ids_resets_counts_and_skips_dropped_sources() {
    let cfg = QueueConfig {
        dead_letter_queue: Some("dead".into()),
        ..small_queue(0)
    };
    let h = run(&[
        Op::CreateQueue("a", cfg.clone()),
        Op::CreateQueue("b", cfg),
        Op::Push("a", Push::new("from a").priority(2), Call::Sync), // 1
        Op::Push("b", Push::new("from b"), Call::Sync),             // 2
        Op::Lease("a", 1, None, Call::Sync),
        Op::Lease("b", 1, None, Call::Sync),
        Op::Dead(first_pick()), // a:1 -> dead:3
        Op::Dead(nth_pick(1)),  // b:2 -> dead:4
        Op::DropQueue("b"),
        Op::Redrive("dead", 5), // only dead:3 goes back, as a:5
        Op::Reopen,
        Op::Redrive("dead", 5),
    ]);
    let s = h.store();
    let a = s.messages("a").unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].id, a[0].receive_count, a[0].priority), (5, 0, 2));
    assert_eq!(a[0].first_received_at, None);
    assert_eq!(a[0].dead_letter_of, None);
    let dead = s.messages("dead").unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, 4);
    assert_eq!(dead[0].dead_letter_of, None, "its source queue was dropped");
    let st = s.stats("a").unwrap();
    assert_eq!((st.counters.dead_lettered, st.counters.redriven), (1, 1));
}

#[test]
fn topic_retention_cursors_and_skipped_counts() {
    let cfg = TopicConfig {
        retention: Duration::from_secs(10),
        max_messages: 3,
        ..TopicConfig::default()
    };
    let h = run(&[
        Op::CreateTopic("t", cfg),
        Op::Publish("t", b"before".to_vec(), Call::Sync),
        Op::Subscribe(0, "t"),
        Op::DurableCursor(1, "t", "c1", CursorStart::Earliest),
        Op::PublishBatch("t", vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]),
        // "before" was trimmed by count: the durable cursor skips it.
        Op::Next(1, Call::Sync),
        Op::CommitCursor(1),
        Op::Latest(0),
        Op::Advance(10_000),
        Op::Publish("t", b"4".to_vec(), Call::Sync),
        Op::Next(1, Call::Sync),
        Op::Reopen,
        Op::DurableCursor(2, "t", "c1", CursorStart::Now),
    ]);
    let (store_cursor, _) = h.cursors[2].clone().unwrap();
    assert_eq!(store_cursor.next, 3, "committed after reading seq 2");
    let st = h.store().topic_stats("t").unwrap();
    assert_eq!((st.last_seq, st.retained, st.counters.expired), (5, 1, 4));
}

// --- regressions found by the model, and the documented clock-rewind limitation ---------------

/// Recovery replays `TPUB` entries and trims each topic by age with the replay's clock but
/// with the config in force at that point of the log. A retention lengthened later by
/// `configure_topic` is applied only when its `TDEF` entry is replayed, too late: messages
/// that the live store keeps (younger than the new retention, older than the old one) are
/// dropped at reopen and counted as expired.
#[test]
fn topic_retention_lengthened_by_configure_survives_a_reopen() {
    let clock = ManualClock::new(T0);
    let vfs = Arc::new(MemVfs::new());
    let options = Harness::options_with(&Setup::default(), &clock);
    let short = TopicConfig {
        retention: Duration::from_secs(2),
        ..TopicConfig::default()
    };
    let long = TopicConfig {
        retention: Duration::from_secs(60),
        ..TopicConfig::default()
    };
    let s = Store::open_with_vfs(vfs.clone(), "/s", options.clone()).unwrap();
    s.create_topic("t", short).unwrap();
    s.publish("t", "x").unwrap();
    s.configure_topic("t", long).unwrap();
    clock.advance(3_000);
    assert_eq!(
        s.topic_stats("t").unwrap().retained,
        1,
        "kept by the 60 s retention"
    );
    s.close().unwrap();
    let s = Store::open_with_vfs(vfs, "/s", options).unwrap();
    let st = s.topic_stats("t").unwrap();
    assert_eq!(
        (st.retained, st.counters.expired),
        (1, 0),
        "the reopened store dropped a message its live self kept"
    );
}

/// Trimming a topic by age is not logged: recovery re-derives it by replaying `TPUB` entries
/// against the clock at reopen. When the clock is behind the time a trim happened (it jumped
/// back, as on a device without a real-time clock that rebooted), messages that were trimmed,
/// and counted as expired, are retained again after the reopen, and readers see them again.
#[test]
#[ignore = "known limitation (ARCHITECTURE.md, time): a trim seen only by reads is not logged, so a clock set back across a restart shows the message again"]
fn topic_messages_trimmed_by_age_stay_trimmed_after_a_reopen_behind_the_clock() {
    let clock = ManualClock::new(T0);
    let vfs = Arc::new(MemVfs::new());
    let options = Harness::options_with(&Setup::default(), &clock);
    let s = Store::open_with_vfs(vfs.clone(), "/s", options.clone()).unwrap();
    let config = TopicConfig {
        retention: Duration::from_secs(1),
        ..TopicConfig::default()
    };
    s.create_topic("t", config).unwrap();
    s.publish("t", "x").unwrap();
    clock.advance(1_000);
    let st = s.topic_stats("t").unwrap();
    assert_eq!((st.retained, st.counters.expired), (0, 1), "trimmed by age");
    s.close().unwrap();
    clock.set(T0 + 999);
    let s = Store::open_with_vfs(vfs, "/s", options).unwrap();
    let st = s.topic_stats("t").unwrap();
    assert_eq!(
        (st.retained, st.counters.expired),
        (0, 1),
        "a trimmed message came back after the reopen"
    );
}

/// The same root cause on the queue side: a delayed message that became ready is replayed as
/// `Delayed(visible_at)` against the clock at reopen, so after a reopen behind the clock it is
/// hidden again (until the clock catches up) although the live store had made it ready.
#[test]
#[ignore = "known limitation (ARCHITECTURE.md, time): a delay end seen only by reads is not logged, so a clock set back across a restart delays the message again"]
fn a_ready_message_stays_ready_after_a_reopen_behind_the_clock() {
    let clock = ManualClock::new(T0);
    let vfs = Arc::new(MemVfs::new());
    let options = Harness::options_with(&Setup::default(), &clock);
    let s = Store::open_with_vfs(vfs.clone(), "/s", options.clone()).unwrap();
    s.push("q", Push::new("x").delay(Duration::from_secs(1)))
        .unwrap();
    clock.advance(1_000);
    assert_eq!(s.stats("q").unwrap().visible, 1, "the delay is over");
    s.close().unwrap();
    clock.set(T0 + 999);
    let s = Store::open_with_vfs(vfs, "/s", options).unwrap();
    assert_eq!(
        s.messages("q").unwrap()[0].state,
        spool_engine::MessageState::Ready,
        "a ready message was delayed again by the reopen"
    );
}
