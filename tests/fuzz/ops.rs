//! The `ops` target: bytes decode into operations on a forest of contexts,
//! run on one thread; after every step every live context is compared with
//! the sequential model (`crate::model`), and at the end everything is
//! cancelled and dropped and the after-funcs and live values are settled
//! against it.
//!
//! # Input format
//!
//! Operations follow one another until the input ends; each is an opcode
//! byte and its operand bytes: 251 to 255 are the stripes, `on_done` and
//! `merge` operations below, any other byte is taken `% 12`. `ctx` picks among the nodes held by
//! a context (`% count`, in creation order: 0 `background`, 1 `todo`, 2 the
//! run's long-lived `base = background.with_cancel()`, then derived ones),
//! `cancel` among nodes held by a cancel handle, `after` among after-funcs
//! still held, `on-done` among `OnDone`s still held. `cause` is `% 3`: a fresh `Tag`, `Error::Canceled`,
//! `Error::DeadlineExceeded`.
//!
//! | op | operands | does |
//! |----|----------|------|
//! | 0  | ctx, how (`% 12`), [key / ms / cause] | derive: 0 `with_cancel`, 1 `with_cancel_cause`, 2 `with_value` (key `% 3`), 3 `without_cancel`, 4/5/6 `with_deadline` past/near (`(n % 8 + 1) × 250 µs`)/far, 7/8/9 the same `with_deadline_cause` (n, then cause), 10 `with_timeout(Duration::MAX)`, 11 `with_timeout_cause(Duration::MAX, cause)` |
//! | 1  | cancel, cause | `cancel()` (the cause is used by a `CancelCauseFunc`) |
//! | 2  | ctx | drop one context (never a root's) |
//! | 3  | cancel | drop one cancel handle (\*) |
//! | 4  | ctx | clone a context |
//! | 5  | cancel | clone a cancel handle |
//! | 6  | ctx | `after_func` |
//! | 7  | after | `stop()` |
//! | 8  | after | drop the `AfterFunc` (\*) |
//! | 9  | ctx | `done().wait_timeout(Duration::ZERO)` |
//! | 10 | ctx, n | `done().wait_timeout(n × 20 µs)` (at most 20 ms of waiting a run) |
//! | 11 | ctx | `Display`, and `Done`'s `is_done()`, `receiver()` and `Debug` |
//! | 251 | ctx | stripe the context's anchor (`stripe_hooks::stripe`, as a contended derivation would; with feature `fuzzing-internals`, else `% 12`): its later children register in a stripe's list; nothing the model sees changes |
//! | 252 | ctx | `on_done(f)` (`f` counts its runs) |
//! | 253 | on-done | `OnDone::stop()` |
//! | 254 | on-done | drop the `OnDone` (stops `f`) |
//! | 255 | ctx, ctx | `ctx.merge(&other)` |
//!
//! The stripes, `on_done` and `merge` opcodes were added after the corpus in
//! `tests/fuzz/regressions/ops` was recorded: an older input with one of
//! those bytes in opcode position now runs that operation instead of
//! `% 12`'s (still a valid run; the replay checks it against the model).
//!
//! (\*) Dropping the last handle of a context with a pending after-func
//! (no deadline on its path) frees it and drops the callback unrun — the
//! context can no longer be done (the `AfterFunc` itself is such a handle).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use goctx::{AfterFunc, CancelCauseFunc, CancelFunc, Context, OnDone};

use crate::input::Input;
use crate::model::{
    BACKGROUND, Bounds, CauseId, Derive, Expiry, Kind, Model, State, TODO, Verdict,
};
use crate::probe::{self, Tracked};

/// The run's long-lived cancellable root, held throughout by the harness.
const BASE: usize = 2;
const MAX_STEPS: usize = 200;
const MAX_NODES: usize = 48;
const MAX_AFTERS: usize = 24;
const MAX_ON_DONES: usize = 24;
const MAX_CLONES: usize = 3;
const WAIT_BUDGET: Duration = Duration::from_millis(20);
/// How long anything that must happen asynchronously (an expiry reaching a
/// descendant, an after-func running, a runner letting go of a context)
/// may take before the run fails.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut forest = Forest::new();
    let mut input = Input::new(data);
    for _ in 0..MAX_STEPS {
        let Some(op) = input.byte() else { break };
        forest.step(op, &mut input);
        forest.check_all();
    }
    forest.finish();
}

enum Canceller {
    Plain(CancelFunc),
    Cause(CancelCauseFunc),
}

impl Canceller {
    fn cancel(&self, cause: CauseId) -> State {
        match self {
            Canceller::Plain(cancel) => {
                cancel.cancel();
                State::canceled(None)
            }
            Canceller::Cause(cancel) => {
                cancel.cancel(cause.cause());
                State::canceled(Some(cause))
            }
        }
    }

    fn clone_handle(&self) -> Canceller {
        match self {
            Canceller::Plain(cancel) => Canceller::Plain(cancel.clone()),
            Canceller::Cause(cancel) => Canceller::Cause(cancel.clone()),
        }
    }
}

struct After {
    handle: Option<AfterFunc>,
    runs: Arc<AtomicUsize>,
}

struct Registered {
    handle: Option<OnDone>,
    runs: Arc<AtomicUsize>,
}

/// The real forest beside its model; `contexts[i]` and `cancels[i]` hold
/// the handles of model node `i`.
struct Forest {
    model: Model,
    contexts: Vec<Vec<Context>>,
    cancels: Vec<Vec<Canceller>>,
    afters: Vec<After>,
    on_dones: Vec<Registered>,
    /// Live `Tracked` instances of this run.
    live: Arc<AtomicUsize>,
    next_id: u32,
    wait_left: Duration,
    /// The harness's own hold on `BASE`.
    base: Option<(Context, CancelFunc)>,
}

impl Forest {
    fn new() -> Forest {
        let mut model = Model::new();
        let base = model.derive(BACKGROUND, Derive::Cancel);
        assert_eq!(base, BASE);
        model.set_pinned(BASE, true);
        let (ctx, cancel) = Context::background().with_cancel();
        Forest {
            model,
            contexts: vec![
                vec![Context::background()],
                vec![Context::todo()],
                vec![ctx.clone()],
            ],
            cancels: vec![
                Vec::new(),
                Vec::new(),
                vec![Canceller::Plain(cancel.clone())],
            ],
            afters: Vec::new(),
            on_dones: Vec::new(),
            live: Arc::new(AtomicUsize::new(0)),
            next_id: 0,
            wait_left: WAIT_BUDGET,
            base: Some((ctx, cancel)),
        }
    }

    fn fresh_id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn cause(&mut self, input: &mut Input<'_>) -> CauseId {
        match input.choose(3) {
            0 => CauseId::Tag(self.fresh_id().into()),
            1 => CauseId::Canceled,
            _ => CauseId::DeadlineExceeded,
        }
    }

    fn with_contexts(&self) -> Vec<usize> {
        (0..self.model.len())
            .filter(|&i| self.model.contexts(i) > 0)
            .collect()
    }

    fn with_cancels(&self) -> Vec<usize> {
        (0..self.model.len())
            .filter(|&i| self.model.cancels(i) > 0)
            .collect()
    }

    fn held_afters(&self) -> Vec<usize> {
        (0..self.afters.len())
            .filter(|&a| self.afters[a].handle.is_some())
            .collect()
    }

    fn held_on_dones(&self) -> Vec<usize> {
        (0..self.on_dones.len())
            .filter(|&o| self.on_dones[o].handle.is_some())
            .collect()
    }

    fn step(&mut self, op: u8, input: &mut Input<'_>) {
        if op >= 252 {
            return self.step_on_done(op, input);
        }
        // (`stripe_hooks` needs the feature, which the packaged crate's
        // tests lack: there 251 is `% 12`'s.)
        #[cfg(feature = "fuzzing-internals")]
        if op == 251 {
            // Stripes (as contention would install them) change where new
            // children register, nothing the model sees.
            if let Some(node) = input.pick(&self.with_contexts()) {
                goctx::stripe_hooks::stripe(&self.contexts[node][0]);
            }
            return;
        }
        match op % 12 {
            0 => self.derive(input),
            1 => {
                let target = input.pick(&self.with_cancels());
                let cause = self.cause(input);
                if let Some(node) = target {
                    let state = self.cancels[node][0].cancel(cause);
                    self.model.cancel(node, state);
                }
            }
            2 => {
                let droppable: Vec<usize> = self
                    .with_contexts()
                    .into_iter()
                    .filter(|&i| i > TODO)
                    .collect();
                if let Some(node) = input.pick(&droppable) {
                    drop(self.contexts[node].pop());
                    self.model.set_contexts(node, self.contexts[node].len());
                    self.model.note_releases();
                }
            }
            3 => {
                if let Some(node) = input.pick(&self.with_cancels()) {
                    let held = self.cancels[node].len();
                    self.model.set_cancels(node, held - 1);
                    drop(self.cancels[node].pop());
                    self.model.note_releases();
                }
            }
            4 => {
                if let Some(node) = input.pick(&self.with_contexts())
                    && node > TODO
                    && self.contexts[node].len() < MAX_CLONES
                {
                    let clone = self.contexts[node][0].clone();
                    self.contexts[node].push(clone);
                    self.model.set_contexts(node, self.contexts[node].len());
                }
            }
            5 => {
                if let Some(node) = input.pick(&self.with_cancels())
                    && self.cancels[node].len() < MAX_CLONES
                {
                    let clone = self.cancels[node][0].clone_handle();
                    self.cancels[node].push(clone);
                    self.model.set_cancels(node, self.cancels[node].len());
                }
            }
            6 => {
                if let Some(node) = input.pick(&self.with_contexts())
                    && self.afters.len() < MAX_AFTERS
                {
                    self.after_func(node);
                }
            }
            7 => {
                if let Some(after) = input.pick(&self.held_afters()) {
                    let returned = self.afters[after].handle.as_ref().unwrap().stop();
                    self.model
                        .stop(after, returned)
                        .unwrap_or_else(|e| self.fail(&e));
                    self.model.note_releases();
                }
            }
            8 => {
                if let Some(after) = input.pick(&self.held_afters()) {
                    self.model.set_after_handle(after, false);
                    drop(self.afters[after].handle.take());
                    self.model.note_releases();
                }
            }
            9 => {
                if let Some(node) = input.pick(&self.with_contexts()) {
                    self.wait(node, Duration::ZERO);
                }
            }
            10 => {
                let node = input.pick(&self.with_contexts());
                let wanted = Duration::from_micros(20) * u32::from(input.byte().unwrap_or(0));
                let timeout = wanted.min(self.wait_left);
                self.wait_left -= timeout;
                if let Some(node) = node {
                    self.wait(node, timeout);
                }
            }
            _ => {
                if let Some(node) = input.pick(&self.with_contexts()) {
                    self.query(node);
                }
            }
        }
    }

    fn step_on_done(&mut self, op: u8, input: &mut Input<'_>) {
        match op {
            253 => {
                if let Some(index) = input.pick(&self.held_on_dones()) {
                    let registered = &self.on_dones[index];
                    let returned = registered.handle.as_ref().unwrap().stop();
                    let runs = registered.runs.load(Ordering::SeqCst);
                    self.model
                        .stop_on_done(index, returned, runs)
                        .unwrap_or_else(|e| self.fail(&e));
                    self.model.note_releases();
                }
            }
            254 => {
                if let Some(index) = input.pick(&self.held_on_dones()) {
                    drop(self.on_dones[index].handle.take());
                    let runs = self.on_dones[index].runs.load(Ordering::SeqCst);
                    self.model.drop_on_done(index, runs);
                    self.model.note_releases();
                }
            }
            255 => {
                let held = self.with_contexts();
                let parent = input.pick(&held).expect("roots are held");
                let other = input.pick(&held).expect("roots are held");
                if self.model.len() < MAX_NODES {
                    let (ctx, cancel) = self.contexts[parent][0].merge(&self.contexts[other][0]);
                    let node = self.model.derive(parent, Derive::Merge { other });
                    assert_eq!(node, self.contexts.len());
                    self.contexts.push(vec![ctx]);
                    self.cancels.push(vec![Canceller::Plain(cancel)]);
                }
            }
            _ => {
                if let Some(node) = input.pick(&self.with_contexts())
                    && self.on_dones.len() < MAX_ON_DONES
                {
                    let runs = Arc::new(AtomicUsize::new(0));
                    let counter = Arc::clone(&runs);
                    let handle = self.contexts[node][0].on_done(move || {
                        counter.fetch_add(1, Ordering::SeqCst);
                    });
                    let index = self.model.on_done(node);
                    assert_eq!(index, self.on_dones.len());
                    self.on_dones.push(Registered {
                        handle: Some(handle),
                        runs,
                    });
                }
            }
        }
    }

    fn derive(&mut self, input: &mut Input<'_>) {
        let parent = input.pick(&self.with_contexts()).expect("roots are held");
        let how = input.choose(12);
        let key = if how == 2 {
            input.choose(probe::KEYS)
        } else {
            0
        };
        let expiry = match how {
            4 | 7 => Expiry::Past,
            5 | 8 => Expiry::Near,
            _ => Expiry::Far,
        };
        let near_quarters = if how == 5 || how == 8 {
            input.choose(8) as u32 + 1
        } else {
            0
        };
        let cause = if matches!(how, 7..=9 | 11) {
            Some(self.cause(input))
        } else {
            None
        };
        if self.model.len() >= MAX_NODES {
            return;
        }
        let now = Instant::now();
        let at = match expiry {
            // At or before now (API.md 7); `now` itself if the clock is
            // too young to go back.
            Expiry::Past => now.checked_sub(Duration::from_micros(1)).unwrap_or(now),
            Expiry::Near => now + Duration::from_micros(250) * near_quarters,
            Expiry::Far => now + Duration::from_secs(3600),
        };
        let p = &self.contexts[parent][0];
        let (ctx, canceller, model_how) = match how {
            0 => {
                let (ctx, cancel) = p.with_cancel();
                (ctx, Some(Canceller::Plain(cancel)), Derive::Cancel)
            }
            1 => {
                let (ctx, cancel) = p.with_cancel_cause();
                (ctx, Some(Canceller::Cause(cancel)), Derive::Cancel)
            }
            2 => {
                let id = self.next_id + 1;
                let ctx = probe::with_value(p, key, Tracked::new(id, &self.live));
                self.next_id = id;
                (ctx, None, Derive::Value { key, id })
            }
            3 => (p.without_cancel(), None, Derive::WithoutCancel),
            4..=9 => {
                let (ctx, cancel) = match cause {
                    None => p.with_deadline(at),
                    Some(cause) => p.with_deadline_cause(at, cause.cause()),
                };
                let how = Derive::Deadline { at, expiry, cause };
                (ctx, Some(Canceller::Plain(cancel)), how)
            }
            _ => {
                let (ctx, cancel) = match cause {
                    None => p.with_timeout(Duration::MAX),
                    Some(cause) => p.with_timeout_cause(Duration::MAX, cause.cause()),
                };
                (ctx, Some(Canceller::Plain(cancel)), Derive::Cancel)
            }
        };
        let node = self.model.derive(parent, model_how);
        self.contexts.push(vec![ctx]);
        self.cancels.push(canceller.into_iter().collect());
        assert_eq!(self.model.cancels(node), self.cancels[node].len());
    }

    fn after_func(&mut self, node: usize) {
        let runs = Arc::new(AtomicUsize::new(0));
        let closure = {
            let runs = Arc::clone(&runs);
            let tracked = Tracked::new(self.fresh_id(), &self.live);
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
                drop(tracked);
            }
        };
        let handle = self.contexts[node][0].after_func(closure);
        let after = self.model.after_func(node);
        assert_eq!(after, self.afters.len());
        self.afters.push(After {
            handle: Some(handle),
            runs,
        });
    }

    fn wait(&mut self, node: usize, timeout: Duration) {
        let ctx = &self.contexts[node][0];
        let start = Instant::now();
        let done = ctx.done().wait_timeout(timeout);
        let waited = start.elapsed();
        let seen = probe::observe(ctx);
        if done && seen.is_none() {
            self.fail(&format!(
                "context {node}: wait_timeout returned true, not done"
            ));
        }
        if !done {
            if waited < timeout {
                self.fail(&format!(
                    "context {node}: wait_timeout gave up early, {waited:?}"
                ));
            }
            if self.model.exact_state(node).is_some_and(|s| s.is_some()) {
                self.fail(&format!(
                    "context {node}: wait_timeout false on a done context"
                ));
            }
        }
        self.observe_and_check(node);
    }

    fn query(&mut self, node: usize) {
        let ctx = &self.contexts[node][0];
        let shown = ctx.to_string();
        let others = |other: usize| self.model.kinds(other);
        if !display_matches(&shown, &self.model.kinds(node), &others) {
            self.fail(&format!(
                "context {node}: Display {shown:?}, kinds {:?}",
                self.model.kinds(node)
            ));
        }
        let done = ctx.done();
        let clone = done.clone();
        let is_done = done.is_done();
        // API.md 16: disconnected once done (done first, then the
        // receiver, then the clone: each sees at least what came before).
        // Feature `crossbeam-channel`: on in this tree (the self
        // dev-dependency) and in the fuzz crate; the packaged crate's tests
        // replay without it.
        #[cfg(feature = "crossbeam-channel")]
        let disconnected = done
            .receiver()
            .try_recv()
            .is_err_and(|e| e.is_disconnected());
        #[cfg(not(feature = "crossbeam-channel"))]
        let disconnected = is_done;
        let _ = format!("{ctx:?} {done:?}");
        let later = clone.is_done();
        if is_done && !disconnected {
            self.fail(&format!(
                "context {node}: done, but its receiver is not disconnected"
            ));
        }
        if disconnected && !later {
            self.fail(&format!(
                "context {node}: receiver disconnected, context not done"
            ));
        }
        if is_done && !later {
            self.fail(&format!(
                "context {node}: a Done clone went back to running"
            ));
        }
        drop((done, clone));
        if is_done && probe::observe(&self.contexts[node][0]).is_none() {
            self.fail(&format!("context {node}: Done is done, the context is not"));
        }
        self.observe_and_check(node);
    }

    /// Observes `node` and checks it against the model, waiting (boundedly)
    /// when an expiry may still be propagating. Returns what it saw.
    fn observe_and_check(&mut self, node: usize) -> Option<State> {
        let ctx = &self.contexts[node][0];
        let seen = probe::observe(ctx);
        match self.model.check(node, seen, Instant::now()) {
            Ok(()) => seen,
            Err(Verdict::Mismatch(why)) => self.fail(&why),
            Err(Verdict::Wait(why)) => {
                ctx.done().wait_timeout(SETTLE);
                let seen = probe::observe(ctx);
                match self.model.check(node, seen, Instant::now()) {
                    Ok(()) => seen,
                    Err(Verdict::Wait(_)) => self.fail(&format!("{why} (waited {SETTLE:?})")),
                    Err(Verdict::Mismatch(why)) => self.fail(&why),
                }
            }
        }
    }

    /// Compares every live context, and every after-func's run count, with
    /// the model.
    fn check_all(&mut self) {
        let held = self.with_contexts();
        let mut running = Vec::new();
        for &node in &held {
            if self.observe_and_check(node).is_none() {
                running.push(node);
            }
        }
        // A context seen running before a context on its path was seen done
        // must be done now, or soon (children of a done node are done).
        for node in running {
            self.observe_and_check(node);
        }
        let snapshot = self.model.snapshot();
        for &node in &held {
            let ctx = &self.contexts[node][0];
            if ctx.deadline() != self.model.deadline(node) {
                self.fail(&format!("context {node}: deadline {:?}", ctx.deadline()));
            }
            for key in 0..probe::KEYS {
                if probe::value_id(ctx, key) != self.model.value(node, key) {
                    self.fail(&format!("context {node}: value of key {key}"));
                }
            }
            let registered = ctx.registered_children();
            let bounds = snapshot.registered_children(node);
            if !(bounds.min..=bounds.max).contains(&registered) {
                self.fail(&format!(
                    "context {node}: registered_children() {registered}, model {bounds:?}"
                ));
            }
        }
        self.check_runs();
        let live = self.live.load(Ordering::SeqCst);
        let bounds = snapshot.live;
        if !(bounds.min..=bounds.max).contains(&live) {
            self.fail(&format!("{live} live values, model {bounds:?}"));
        }
    }

    fn check_runs(&mut self) {
        for (index, after) in self.afters.iter().enumerate() {
            let runs = after.runs.load(Ordering::SeqCst);
            self.model
                .check_runs(index, runs)
                .unwrap_or_else(|e| self.fail(&e));
        }
        for index in 0..self.on_dones.len() {
            let runs = self.on_dones[index].runs.load(Ordering::SeqCst);
            if let Err(e) = self.model.check_on_done(index, runs) {
                self.fail(&e);
            }
        }
    }

    /// Cancels everything but `BASE`, lets every near deadline pass, settles
    /// the after-funcs, drops everything and settles `BASE`'s registered
    /// children and the live values; then does the same with `BASE`
    /// cancelled and released.
    fn finish(&mut self) {
        for node in self.with_cancels() {
            if node != BASE {
                let cause = CauseId::Tag(self.fresh_id().into());
                let state = self.cancels[node][0].cancel(cause);
                self.model.cancel(node, state);
            }
        }
        if let Some(latest) = self.model.latest_near() {
            let now = Instant::now();
            if latest > now {
                std::thread::sleep(latest - now);
            }
        }
        // A pending after-func on a context that can never be done now
        // would stay pending: stop it (the model says whether it must work).
        for after in self.held_afters() {
            if !self.model.runs_eventually(after) {
                let returned = self.afters[after].handle.as_ref().unwrap().stop();
                self.model
                    .stop(after, returned)
                    .unwrap_or_else(|e| self.fail(&e));
            }
        }
        self.settle_runs();
        self.check_all();

        for node in 0..self.model.len() {
            if node > TODO {
                self.contexts[node].clear();
                self.model.set_contexts(node, 0);
            }
            self.cancels[node].clear();
            self.model.set_cancels(node, 0);
        }
        for after in 0..self.afters.len() {
            drop(self.afters[after].handle.take());
            self.model.set_after_handle(after, false);
        }
        for index in self.held_on_dones() {
            drop(self.on_dones[index].handle.take());
            let runs = self.on_dones[index].runs.load(Ordering::SeqCst);
            self.model.drop_on_done(index, runs);
        }
        self.model.note_releases();
        self.settle_released("after dropping everything");

        let (base, cancel) = self.base.take().expect("held until now");
        cancel.cancel();
        self.model.cancel(BASE, State::canceled(None));
        self.settle_runs();
        drop((base, cancel));
        self.model.set_pinned(BASE, false);
        self.settle_released("after releasing the base");
        self.check_runs();
    }

    /// Waits until every after-func that must run has run.
    fn settle_runs(&mut self) {
        let give_up = Instant::now() + SETTLE;
        for (index, after) in self.afters.iter().enumerate() {
            if self.model.runs_eventually(index) {
                let mut round = 0;
                while after.runs.load(Ordering::SeqCst) == 0 {
                    if Instant::now() > give_up {
                        self.fail(&format!("after-func {index} never ran"));
                    }
                    back_off(&mut round);
                }
            }
        }
        for (index, registered) in self.on_dones.iter().enumerate() {
            if self.model.on_done_runs_eventually(index) {
                let mut round = 0;
                while registered.runs.load(Ordering::SeqCst) == 0 {
                    if Instant::now() > give_up {
                        self.fail(&format!("on-done {index} never ran"));
                    }
                    back_off(&mut round);
                }
            }
        }
        self.check_runs();
    }

    /// Waits until `BASE`'s registered children and the live values come
    /// down to what the model says is certainly alive.
    fn settle_released(&self, when: &str) {
        let snapshot = self.model.snapshot();
        let registered = snapshot.registered_children(BASE);
        let live = snapshot.live;
        let base = self.base.as_ref().map(|(ctx, _)| ctx);
        let give_up = Instant::now() + SETTLE;
        let mut round = 0;
        loop {
            let real_registered = base.map_or(0, Context::registered_children);
            let real_live = self.live.load(Ordering::SeqCst);
            let state = format!(
                "{when}: base registered_children() {real_registered} (model {registered:?}), \
                 live values {real_live} (model {live:?})"
            );
            let within = |real: usize, model: Bounds| (model.min..=model.max).contains(&real);
            if !within(real_registered, registered) || !within(real_live, live) {
                self.fail(&state);
            }
            if real_registered == registered.min && real_live == live.min {
                return;
            }
            if Instant::now() > give_up {
                self.fail(&format!("{state}: never settled"));
            }
            back_off(&mut round);
        }
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "goctx differs from the model: {why}\nmodel: {:#?}",
            self.model
        );
    }
}

/// Waits a little for another thread: yields at first, then sleeps.
pub(crate) fn back_off(round: &mut u32) {
    *round += 1;
    if *round < 64 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Whether `shown` is the `Display` of a context with these kinds (API.md
/// 12): deadline segments match any `.WithDeadline(... [...])`; a merge
/// with `other` is `.Merge(` `other`'s `Display` `)`, the kinds of `other`
/// coming from `others` (API.md 15).
fn display_matches(shown: &str, kinds: &[Kind], others: &dyn Fn(usize) -> Vec<Kind>) -> bool {
    display_prefix(shown, kinds, others) == Some("")
}

/// What is left of `shown` after the `Display` of `kinds`, if it starts so.
fn display_prefix<'a>(
    shown: &'a str,
    kinds: &[Kind],
    others: &dyn Fn(usize) -> Vec<Kind>,
) -> Option<&'a str> {
    let mut rest = shown;
    for kind in kinds {
        let fixed = match kind {
            Kind::Background => "context.Background".to_owned(),
            Kind::Todo => "context.TODO".to_owned(),
            Kind::Cancel => ".WithCancel".to_owned(),
            Kind::WithoutCancel => ".WithoutCancel".to_owned(),
            Kind::Value { key, .. } => format!(".WithValue({})", probe::value_type_name(*key)),
            Kind::Deadline => {
                let after = rest.strip_prefix(".WithDeadline(")?;
                let end = after.find("])")?;
                rest = &after[end + 2..];
                continue;
            }
            Kind::Merge { other, .. } => {
                let after = rest.strip_prefix(".Merge(")?;
                let after = display_prefix(after, &others(*other), others)?;
                rest = after.strip_prefix(')')?;
                continue;
            }
        };
        rest = rest.strip_prefix(fixed.as_str())?;
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_pattern_matches_real_display() {
        let (ctx, _cancel) =
            Context::todo().with_deadline(Instant::now() + Duration::from_secs(60));
        let (ctx, _c) = ctx.without_cancel().with_cancel();
        let shown = ctx.to_string();
        let kinds = [
            Kind::Todo,
            Kind::Deadline,
            Kind::WithoutCancel,
            Kind::Cancel,
        ];
        let none = |_| Vec::new();
        assert!(display_matches(&shown, &kinds, &none), "{shown}");
        assert!(!display_matches(&shown, &kinds[..3], &none), "{shown}");
    }
}
