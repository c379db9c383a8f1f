//! The `concurrent` target: bytes decode into operations on one forest of
//! contexts, each run by one of two threads; the threads rendezvous (a
//! `Barrier`) where the input says, and while they are parked there the
//! forest is checked against invariants that hold under any interleaving:
//!
//! 1. A context's `err()` and `cause()` never change once seen (across
//!    both threads), and its state comes from a cancellation or deadline
//!    aimed at a node on its path, a near deadline no earlier than it
//!    passed.
//! 2. Once every canceller has returned, every context with a cancellation
//!    on its path is done; a context under a node seen done is done (after
//!    a bounded wait when a deadline expiry may still be propagating).
//! 3. A state with a unique cause came from one node, and every node on
//!    the path between that node and the context has the same state (the
//!    first cause wins all the way down).
//! 4. An after-func runs at most once, never after a `stop()` returned
//!    true, and at most one `stop()` returns true; at the end it has run iff
//!    no `stop()` returned true.
//! 5. No leak: once everything is dropped, the long-lived root has no
//!    registered children and no value or callback is still alive.
//!
//! The harness keeps its bookkeeping in a `Mutex`, but takes nothing but
//! clones under it: every goctx call runs outside the lock.
//!
//! # Input format
//!
//! Byte 0: bit 0 set cancels everything before the final drop (else the
//! forest is just dropped). Then operations: a control byte `c` — thread
//! `c >> 7`, opcode `(c & 0x7f) % 11` — and its operand bytes. `node` is
//! `% nodes` over the forest (0 `background`, 1 `todo`, 2 the long-lived
//! `base`, then derived ones, whichever thread made them); an operation on
//! a node without the handle it needs does nothing.
//!
//! | op | operands | does |
//! |----|----------|------|
//! | 0  | node, how (`% 10`) | derive: 0 `with_cancel`, 1 `with_cancel_cause`, 2 `with_value`, 3 `without_cancel`, 4/5/6 `with_deadline` past/near (500 µs)/far, 7/8/9 the same with a cause |
//! | 1  | node | `cancel()` (a fresh cause for a `CancelCauseFunc`) |
//! | 2  | node | drop a context |
//! | 3  | node | drop a cancel handle |
//! | 4  | node | clone a context |
//! | 5  | node | `after_func` |
//! | 6  | after (`% after-funcs`) | `stop()` |
//! | 7  | node | observe `err()`/`cause()` |
//! | 8  | node | `done().wait_timeout(Duration::ZERO)` |
//! | 9  | n | spin `n` times |
//! | 10 | — | rendezvous: both threads finish their operations so far, wait, and the forest is checked |

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use goctx::{AfterFunc, CancelCauseFunc, CancelFunc, Context};

use crate::input::Input;
use crate::model::{CauseId, State};
use crate::ops::back_off;
use crate::probe::{self, Tracked};

const MAX_OPS: usize = 128;
const MAX_SEGMENTS: usize = 12;
const MAX_NODES: usize = 48;
const MAX_AFTERS: usize = 16;
const MAX_CLONES: usize = 3;
/// The long-lived cancellable root.
const BASE: usize = 2;
/// How long anything asynchronous may take before the run fails.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let cancel_at_end = input.byte().unwrap_or(0) & 1 == 1;
    let segments = decode(&mut input);
    let forest = Forest::new();
    let barrier = Barrier::new(2);
    let failure: Mutex<Option<Box<dyn Any + Send>>> = Mutex::new(None);
    // A failing thread keeps meeting the barrier (doing nothing else), so
    // the other never hangs; the first panic is resumed after the join.
    let guarded = |f: &mut dyn FnMut()| {
        if forest.failed.load(Ordering::SeqCst) {
            return;
        }
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
            forest.failed.store(true, Ordering::SeqCst);
            lock(&failure).get_or_insert(payload);
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            barrier.wait();
            for segment in &segments {
                guarded(&mut || forest.run_ops(&segment[1]));
                barrier.wait();
                barrier.wait();
            }
        });
        // Both threads start each segment together.
        barrier.wait();
        for segment in &segments {
            guarded(&mut || forest.run_ops(&segment[0]));
            barrier.wait();
            guarded(&mut || forest.checkpoint());
            barrier.wait();
        }
    });
    if let Some(payload) = lock(&failure).take() {
        panic::resume_unwind(payload);
    }
    forest.finish(cancel_at_end);
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Derive { node: u8, how: u8 },
    Cancel(u8),
    DropContext(u8),
    DropCancel(u8),
    Clone(u8),
    AfterFunc(u8),
    Stop(u8),
    Observe(u8),
    WaitZero(u8),
    Spin(u8),
}

/// Splits the operations into segments at the rendezvous points: segment
/// `s` holds each thread's operations between rendezvous `s - 1` and `s`.
fn decode(input: &mut Input<'_>) -> Vec<[Vec<Op>; 2]> {
    let mut segments = vec![[Vec::new(), Vec::new()]];
    let mut ops = 0;
    while let Some(control) = input.byte() {
        let thread = usize::from(control >> 7);
        let mut operand = || input.byte().unwrap_or(0);
        let op = match (control & 0x7f) % 11 {
            0 => Op::Derive {
                node: operand(),
                how: operand(),
            },
            1 => Op::Cancel(operand()),
            2 => Op::DropContext(operand()),
            3 => Op::DropCancel(operand()),
            4 => Op::Clone(operand()),
            5 => Op::AfterFunc(operand()),
            6 => Op::Stop(operand()),
            7 => Op::Observe(operand()),
            8 => Op::WaitZero(operand()),
            9 => Op::Spin(operand()),
            _ => {
                if segments.len() == MAX_SEGMENTS {
                    break;
                }
                segments.push([Vec::new(), Vec::new()]);
                continue;
            }
        };
        segments.last_mut().expect("one at least")[thread].push(op);
        ops += 1;
        if ops == MAX_OPS {
            break;
        }
    }
    segments
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone)]
enum Canceller {
    Plain(CancelFunc),
    Cause(CancelCauseFunc),
}

/// A cancellation or expiry aimed at a node.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    state: State,
    /// For a deadline expiry: not before this.
    not_before: Option<Instant>,
}

struct Node {
    parent: Option<usize>,
    /// Nearest cancellable ancestor-or-self.
    anchor: Option<usize>,
    /// Whether an expiry of this node's own deadline may be under way.
    near: bool,
    /// Everything that may have decided this node's state: recorded before
    /// the call that could.
    candidates: Vec<Candidate>,
    /// A cancellation that completed before the current checkpoint (a
    /// `cancel()` that returned, or a deadline past at derivation).
    settled: bool,
    latched: Option<State>,
    contexts: Vec<Context>,
    cancels: Vec<Canceller>,
}

struct After {
    handle: Option<Arc<AfterFunc>>,
    runs: Arc<AtomicUsize>,
    stopped: usize,
}

struct Table {
    nodes: Vec<Node>,
    afters: Vec<After>,
}

impl Table {
    fn path(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(self.nodes[node].anchor, |&c| {
            self.nodes[c].parent.and_then(|p| self.nodes[p].anchor)
        })
    }

    fn has_near(&self, node: usize) -> bool {
        self.path(node).any(|p| self.nodes[p].near)
    }

    /// Checks a state seen on `node` (invariant 1) and latches it.
    fn record(&mut self, node: usize, seen: Option<State>, now: Instant) {
        let Some(state) = seen else { return };
        let Some(anchor) = self.nodes[node].anchor else {
            panic!("context {node} can never be done, but is {state:?}");
        };
        let mut expired_early = false;
        let mut found = false;
        for p in self.path(node) {
            for candidate in &self.nodes[p].candidates {
                if candidate.state == state {
                    match candidate.not_before {
                        Some(at) if at > now => expired_early = true,
                        _ => found = true,
                    }
                }
            }
        }
        assert!(
            found,
            "context {node} is {state:?}, {}",
            if expired_early {
                "before its deadline"
            } else {
                "from nothing aimed at its path"
            }
        );
        match self.nodes[anchor].latched {
            Some(latched) => assert_eq!(latched, state, "context {node} changed state"),
            None => self.nodes[anchor].latched = Some(state),
        }
    }
}

struct Forest {
    table: Mutex<Table>,
    live: Arc<AtomicUsize>,
    next_tag: AtomicU32,
    failed: AtomicBool,
    /// The harness's own hold on `BASE`.
    base: Mutex<Option<(Context, CancelFunc)>>,
}

impl Forest {
    fn new() -> Forest {
        let root = |ctx: Context| Node {
            parent: None,
            anchor: None,
            near: false,
            candidates: Vec::new(),
            settled: false,
            latched: None,
            contexts: vec![ctx],
            cancels: Vec::new(),
        };
        let (base, cancel) = Context::background().with_cancel();
        let mut base_node = root(base.clone());
        base_node.parent = Some(0);
        base_node.anchor = Some(BASE);
        base_node.cancels.push(Canceller::Plain(cancel.clone()));
        Forest {
            table: Mutex::new(Table {
                nodes: vec![
                    root(Context::background()),
                    root(Context::todo()),
                    base_node,
                ],
                afters: Vec::new(),
            }),
            live: Arc::new(AtomicUsize::new(0)),
            next_tag: AtomicU32::new(0),
            failed: AtomicBool::new(false),
            base: Mutex::new(Some((base, cancel))),
        }
    }

    fn fresh_cause(&self) -> CauseId {
        CauseId::Tag(u64::from(self.next_tag.fetch_add(1, Ordering::Relaxed)) + 1)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// The node `sel` picks and a clone of one of its contexts.
    fn context(&self, sel: u8) -> Option<(usize, Context)> {
        let table = self.table();
        let node = usize::from(sel) % table.nodes.len();
        let ctx = table.nodes[node].contexts.first()?.clone();
        Some((node, ctx))
    }

    fn run_ops(&self, ops: &[Op]) {
        for &op in ops {
            self.run_op(op);
        }
    }

    fn run_op(&self, op: Op) {
        match op {
            Op::Derive { node, how } => self.derive(node, how),
            Op::Cancel(sel) => {
                let cause = self.fresh_cause();
                let (node, canceller) = {
                    let mut table = self.table();
                    let node = usize::from(sel) % table.nodes.len();
                    let Some(canceller) = table.nodes[node].cancels.first().cloned() else {
                        return;
                    };
                    let state = match canceller {
                        Canceller::Plain(_) => State::canceled(None),
                        Canceller::Cause(_) => State::canceled(Some(cause)),
                    };
                    table.nodes[node].candidates.push(Candidate {
                        state,
                        not_before: None,
                    });
                    (node, canceller)
                };
                match &canceller {
                    Canceller::Plain(cancel) => cancel.cancel(),
                    Canceller::Cause(cancel) => cancel.cancel(cause.cause()),
                }
                self.table().nodes[node].settled = true;
            }
            Op::DropContext(sel) => {
                let dropped = {
                    let mut table = self.table();
                    let node = usize::from(sel) % table.nodes.len();
                    if node == BASE || table.nodes[node].parent.is_none() {
                        None
                    } else {
                        table.nodes[node].contexts.pop()
                    }
                };
                drop(dropped);
            }
            Op::DropCancel(sel) => {
                let dropped = {
                    let mut table = self.table();
                    let node = usize::from(sel) % table.nodes.len();
                    table.nodes[node].cancels.pop()
                };
                drop(dropped);
            }
            Op::Clone(sel) => {
                if let Some((node, ctx)) = self.context(sel) {
                    let mut table = self.table();
                    if table.nodes[node].contexts.len() < MAX_CLONES {
                        table.nodes[node].contexts.push(ctx);
                    }
                }
            }
            Op::AfterFunc(sel) => {
                if self.table().afters.len() >= MAX_AFTERS {
                    return;
                }
                let Some((_, ctx)) = self.context(sel) else {
                    return;
                };
                let runs = Arc::new(AtomicUsize::new(0));
                let closure = {
                    let runs = Arc::clone(&runs);
                    let tracked = Tracked::new(0, &self.live);
                    move || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        drop(tracked);
                    }
                };
                let handle = ctx.after_func(closure);
                self.table().afters.push(After {
                    handle: Some(Arc::new(handle)),
                    runs,
                    stopped: 0,
                });
            }
            Op::Stop(sel) => {
                let (index, handle) = {
                    let table = self.table();
                    if table.afters.is_empty() {
                        return;
                    }
                    let index = usize::from(sel) % table.afters.len();
                    let Some(handle) = table.afters[index].handle.clone() else {
                        return;
                    };
                    (index, handle)
                };
                let stopped = handle.stop();
                self.record_stop(index, stopped);
            }
            Op::Observe(sel) => {
                if let Some((node, ctx)) = self.context(sel) {
                    self.observe(node, &ctx, false);
                }
            }
            Op::WaitZero(sel) => {
                if let Some((node, ctx)) = self.context(sel) {
                    let done = ctx.done().wait_timeout(Duration::ZERO);
                    self.observe(node, &ctx, done);
                }
            }
            Op::Spin(n) => {
                for _ in 0..u32::from(n) * 4 {
                    std::hint::spin_loop();
                }
                if n % 8 == 0 {
                    std::thread::yield_now();
                }
            }
        }
    }

    fn derive(&self, sel: u8, how: u8) {
        let Some((parent, p)) = self.context(sel) else {
            return;
        };
        if self.table().nodes.len() >= MAX_NODES {
            return;
        }
        let how = how % 10;
        let cause = (how >= 7).then(|| self.fresh_cause());
        let now = Instant::now();
        let at = match how {
            4 | 7 => now.checked_sub(Duration::from_micros(1)).unwrap_or(now),
            5 | 8 => now + Duration::from_micros(500),
            _ => now + Duration::from_secs(3600),
        };
        let deadline_node = how >= 4 && p.deadline().is_none_or(|current| current > at);
        let near = deadline_node && matches!(how, 5 | 8);
        let expiry = Candidate {
            state: State::expired(cause),
            not_before: Some(at),
        };
        let (ctx, canceller) = match how {
            0 => {
                let (ctx, cancel) = p.with_cancel();
                (ctx, Some(Canceller::Plain(cancel)))
            }
            1 => {
                let (ctx, cancel) = p.with_cancel_cause();
                (ctx, Some(Canceller::Cause(cancel)))
            }
            2 => {
                let tracked = Tracked::new(0, &self.live);
                (
                    probe::with_value(&p, usize::from(sel) % probe::KEYS, tracked),
                    None,
                )
            }
            3 => (p.without_cancel(), None),
            _ => {
                let (ctx, cancel) = match cause {
                    None => p.with_deadline(at),
                    Some(cause) => p.with_deadline_cause(at, cause.cause()),
                };
                (ctx, Some(Canceller::Plain(cancel)))
            }
        };
        let mut table = self.table();
        let index = table.nodes.len();
        let anchor = if canceller.is_some() {
            Some(index)
        } else if how == 2 {
            table.nodes[parent].anchor
        } else {
            None
        };
        table.nodes.push(Node {
            parent: Some(parent),
            anchor,
            near,
            candidates: if deadline_node && how != 6 && how != 9 {
                vec![expiry]
            } else {
                Vec::new()
            },
            settled: deadline_node && matches!(how, 4 | 7),
            latched: None,
            contexts: vec![ctx],
            cancels: canceller.into_iter().collect(),
        });
    }

    fn record_stop(&self, index: usize, stopped: bool) {
        let mut table = self.table();
        let after = &mut table.afters[index];
        if stopped {
            after.stopped += 1;
            assert_eq!(
                after.stopped, 1,
                "after-func {index}: two stop() calls returned true"
            );
        }
        let runs = after.runs.load(Ordering::SeqCst);
        assert!(
            !(stopped && runs > 0),
            "after-func {index}: stop() returned true after it ran"
        );
    }

    /// Observes `node` through `ctx` (invariant 1). `done` says a wait just
    /// returned true on it.
    fn observe(&self, node: usize, ctx: &Context, done: bool) -> Option<State> {
        let before = {
            let table = self.table();
            table.nodes[node]
                .anchor
                .and_then(|a| table.nodes[a].latched)
        };
        let seen = probe::observe(ctx);
        let now = Instant::now();
        if let Some(before) = before {
            assert_eq!(seen, Some(before), "context {node} changed state");
        }
        assert!(
            !done || seen.is_some(),
            "context {node}: waited done, is not"
        );
        self.table().record(node, seen, now);
        seen
    }

    /// The invariants at a rendezvous (both threads parked, every canceller
    /// returned): 1–4 of the module documentation.
    fn checkpoint(&self) {
        let held: Vec<(usize, Context)> = {
            let table = self.table();
            (0..table.nodes.len())
                .filter_map(|i| table.nodes[i].contexts.first().map(|c| (i, c.clone())))
                .collect()
        };
        let mut seen: Vec<Option<Option<State>>> = vec![None; self.table().nodes.len()];
        for (node, ctx) in &held {
            seen[*node] = Some(self.observe(*node, ctx, false));
        }
        // Invariant 2, then again for contexts seen running before a node
        // on their path was seen done.
        for (node, ctx) in &held {
            if seen[*node] == Some(None) {
                seen[*node] = Some(self.expect_done_if_due(*node, ctx));
            }
        }
        // Invariant 3.
        for (node, ctx) in &held {
            if let Some(Some(state)) = seen[*node] {
                self.check_path(*node, ctx, state, &held);
            }
        }
        self.check_runs();
    }

    /// Invariant 2 for `node`, seen running: if it must be done, wait for it
    /// (boundedly, and only if an expiry may be propagating).
    fn expect_done_if_due(&self, node: usize, ctx: &Context) -> Option<State> {
        let (due, near) = {
            let table = self.table();
            let due = table.path(node).find(|&p| {
                let p = &table.nodes[p];
                p.settled || p.latched.is_some()
            });
            (due, table.has_near(node))
        };
        let seen = self.observe(node, ctx, false);
        match due {
            Some(due) if seen.is_none() => {
                assert!(
                    near,
                    "context {node} running, though {due} on its path is done"
                );
                let done = ctx.done().wait_timeout(SETTLE);
                assert!(
                    done,
                    "context {node} running {SETTLE:?} after {due} was done"
                );
                self.observe(node, ctx, true)
            }
            _ => seen,
        }
    }

    /// Invariant 3: a state with a unique cause is on every node between its
    /// source and `node`.
    fn check_path(&self, node: usize, ctx: &Context, state: State, held: &[(usize, Context)]) {
        if !matches!(state.cause, CauseId::Tag(_)) {
            return;
        }
        let between: Vec<usize> = {
            let table = self.table();
            let path: Vec<usize> = table.path(node).collect();
            let sources: Vec<usize> = path
                .iter()
                .copied()
                .filter(|&p| table.nodes[p].candidates.iter().any(|c| c.state == state))
                .collect();
            let [source] = sources[..] else {
                panic!("context {node} is {state:?}, from {sources:?} on its path {path:?}");
            };
            path.into_iter().take_while(|&p| p != source).collect()
        };
        for (other, other_ctx) in held {
            if between.contains(other) {
                let seen = self.observe(*other, other_ctx, false);
                assert_eq!(
                    seen,
                    Some(state),
                    "context {other} lies between context {node} ({ctx:?}) and the source of its state"
                );
            }
        }
    }

    fn check_runs(&self) {
        let table = self.table();
        for (index, after) in table.afters.iter().enumerate() {
            let runs = after.runs.load(Ordering::SeqCst);
            assert!(runs <= 1, "after-func {index} ran {runs} times");
            assert!(
                runs == 0 || after.stopped == 0,
                "after-func {index} ran after stop() returned true"
            );
        }
    }

    /// Stops every after-func, settles their runs (invariant 4), optionally
    /// cancels everything, drops everything and settles the leak counters
    /// (invariant 5).
    fn finish(&self, cancel_at_end: bool) {
        let handles: Vec<(usize, Arc<AfterFunc>)> = {
            let table = self.table();
            (0..table.afters.len())
                .filter_map(|i| table.afters[i].handle.clone().map(|h| (i, h)))
                .collect()
        };
        for (index, handle) in handles {
            let stopped = handle.stop();
            self.record_stop(index, stopped);
        }
        let give_up = Instant::now() + SETTLE;
        let mut round = 0;
        loop {
            let pending = {
                let table = self.table();
                table
                    .afters
                    .iter()
                    .position(|a| a.stopped == 0 && a.runs.load(Ordering::SeqCst) == 0)
            };
            let Some(index) = pending else { break };
            assert!(
                Instant::now() < give_up,
                "after-func {index} never ran, never stopped"
            );
            back_off(&mut round);
        }
        self.checkpoint();

        let mut table = self.table();
        if cancel_at_end {
            for node in table.nodes.iter().skip(BASE + 1) {
                match node.cancels.first() {
                    Some(Canceller::Plain(cancel)) => cancel.cancel(),
                    Some(Canceller::Cause(cancel)) => cancel.cancel(goctx::Error::Canceled),
                    None => {}
                }
            }
        }
        let nodes = std::mem::take(&mut table.nodes);
        let afters = std::mem::take(&mut table.afters);
        drop(table);
        drop((nodes, afters));
        let base = lock(&self.base).take().expect("held until the end");
        let give_up = Instant::now() + SETTLE;
        let mut round = 0;
        loop {
            let registered = base.0.registered_children();
            let live = self.live.load(Ordering::SeqCst);
            if registered == 0 && live == 0 {
                break;
            }
            assert!(
                Instant::now() < give_up,
                "leak: base has {registered} registered children and {live} values or \
                 callbacks are alive once everything is dropped"
            );
            back_off(&mut round);
        }
        base.1.cancel();
        drop(base);
        assert_eq!(
            self.live.load(Ordering::SeqCst),
            0,
            "leak after releasing the base"
        );
    }
}
