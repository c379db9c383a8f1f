//! A plain sequential model of a goctx forest, written for the `ops`
//! target: a `Vec` arena of nodes with parent indices, each with its kind,
//! deadline, value, handle counts and the cancellations aimed at it.
//!
//! # Exact and uncertain paths
//!
//! A context's *path* is its nearest cancellable ancestor-or-self (its
//! anchor), that node's nearest cancellable ancestor, and so on up to a root
//! or a `without_cancel` layer. With no near deadline (a few milliseconds
//! away) on the path, everything that can make the context done happens
//! synchronously on the test thread, so the model predicts its state
//! exactly: the earliest cancellation of any node on the path (API.md 2,
//! 3). A near deadline expires on the timer thread at a moment the model
//! cannot know, so on such a path the model checks consistency instead:
//!
//! 1. Once seen done, a node's error and cause never change.
//! 2. A done state comes from a cancellation of a node on the path, or
//!    from the expiry of a near deadline on it that has passed.
//! 3. Once a cancellation on the path has returned, or an ancestor on the
//!    path was seen done, or a near deadline on it is well past, the
//!    context is done — after a bounded wait, since the timer thread may
//!    still be propagating an expiry (API.md 2: "unless another
//!    cancellation of the same subtree is still in progress").
//!
//! Past deadlines are exact (done before the derivation returns) and far
//! ones (an hour) never expire during a run.
//!
//! A merged context (`ctx.merge(&other)`, API.md 15) is a cancellable child
//! of `ctx` whose path also takes in `other`'s path: the first cancellation
//! to reach it wins, one of `other`'s that came before the merge counting
//! as reaching it at the merge, after `ctx`'s. Its deadline is the earlier
//! of the two; values and `Display` prefix are `ctx`'s.
//!
//! An `on_done(f)` runs `f` exactly once if the context gets done while the
//! `OnDone` is held and not stopped: on an exact path at once when
//! registered on a done context, else inside the `cancel()` that makes it
//! done; never for a never-done context, or once `stop()` returned true or
//! the `OnDone` was dropped unrun.
//!
//! # Handles and liveness
//!
//! A node stays allocated while anything holds it (API.md 10): its contexts
//! and cancel handles, a child, a pending after-func or a registered
//! `OnDone` on it, or a merged context linked to it. Liveness is
//! three-valued, since an after-func's handle is released on a runner
//! thread after it runs and the timer briefly holds an expiring node:
//! `registered_children()` and the live value count must lie between what
//! is certainly and what is possibly alive, and settle at the lower bound.

use std::time::{Duration, Instant};

use goctx::Error;

/// The root `Context::background()`.
pub(crate) const BACKGROUND: usize = 0;
/// The root `Context::todo()`.
pub(crate) const TODO: usize = 1;

/// How late a near deadline may be before its context is expected done
/// (then waited for, boundedly, rather than failed at once).
const EXPIRY_SLACK: Duration = Duration::from_millis(50);

pub(crate) use crate::identity::CauseId;

/// Why a context is done: its `err()` and the identity of its `cause()`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct State {
    pub(crate) err: Error,
    pub(crate) cause: CauseId,
}

impl State {
    /// A cancellation: `Canceled`, with `cause` or the error itself.
    pub(crate) fn canceled(cause: Option<CauseId>) -> State {
        State {
            err: Error::Canceled,
            cause: cause.unwrap_or(CauseId::Canceled),
        }
    }

    /// A deadline expiry: `DeadlineExceeded`, with `cause` or the error.
    pub(crate) fn expired(cause: Option<CauseId>) -> State {
        State {
            err: Error::DeadlineExceeded,
            cause: cause.unwrap_or(CauseId::DeadlineExceeded),
        }
    }
}

/// Three-valued truth, for what timing the model cannot see decides.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Tri {
    No,
    Maybe,
    Yes,
}

impl Tri {
    fn or(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::Yes, _) | (_, Tri::Yes) => Tri::Yes,
            (Tri::Maybe, _) | (_, Tri::Maybe) => Tri::Maybe,
            _ => Tri::No,
        }
    }
}

/// A count known to lie in `min..=max`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Bounds {
    pub(crate) min: usize,
    pub(crate) max: usize,
}

impl Bounds {
    fn add(&mut self, tri: Tri) {
        if tri == Tri::Yes {
            self.min += 1;
        }
        if tri != Tri::No {
            self.max += 1;
        }
    }
}

/// When a deadline comes, relative to the run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Expiry {
    /// Already passed: done before the derivation returns.
    Past,
    /// A few milliseconds away: expires during the run, when exactly the
    /// model cannot know.
    Near,
    /// An hour away: never expires during a run.
    Far,
}

/// How a context is derived, as far as the model cares.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Derive {
    /// `with_cancel`, `with_cancel_cause`, or a timeout that overflows.
    Cancel,
    /// `with_value(Val<key>(id))`.
    Value { key: usize, id: u32 },
    /// `without_cancel`.
    WithoutCancel,
    /// `with_deadline(at)` or `with_deadline_cause(at, cause)`.
    Deadline {
        at: Instant,
        expiry: Expiry,
        cause: Option<CauseId>,
    },
    /// `parent.merge(&other)` (API.md 15).
    Merge { other: usize },
}

/// What a node is, which is also its segment of `Display`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Background,
    Todo,
    /// Cancellable without a deadline of its own (`.WithCancel`).
    Cancel,
    /// Cancellable with a deadline of its own (`.WithDeadline(..)`).
    Deadline,
    Value {
        key: usize,
        id: u32,
    },
    WithoutCancel,
    /// Merged with context `other` at logical time `at` (`.Merge(..)`).
    Merge {
        other: usize,
        at: u64,
    },
}

/// A cancellation aimed at a node: the first `cancel()` on it, or the
/// expiry of a past deadline at derivation. Later ones can never win.
#[derive(Clone, Copy, Debug)]
struct Event {
    /// Logical time: events happen one after another on the test thread.
    at: u64,
    state: State,
}

/// The pending expiry of a near deadline.
#[derive(Clone, Copy, Debug)]
struct Near {
    deadline: Instant,
    state: State,
}

#[derive(Debug)]
struct Node {
    parent: Option<usize>,
    kind: Kind,
    /// Nearest cancellable ancestor-or-self.
    anchor: Option<usize>,
    deadline: Option<Instant>,
    first_event: Option<Event>,
    near: Option<Near>,
    /// The state seen by an observation (cancellable nodes only).
    latched: Option<State>,
    contexts: usize,
    cancels: usize,
    /// Held by the harness for the whole run.
    pinned: bool,
}

#[derive(Debug)]
struct After {
    anchor: Option<usize>,
    stop_called: bool,
    /// A `stop()` returned true: the callback must never run.
    stopped: bool,
    handle: bool,
    /// Its context was (or may have been) released before it was done: the
    /// callback was dropped unrun (`Tri::Maybe`: it may also have run).
    orphaned: Tri,
    /// Whether the `AfterFunc` holds its context: only when it registered,
    /// i.e. the context was not done yet (`Maybe` under a near deadline).
    holds: Tri,
}

/// An `on_done` registration (API.md 14).
#[derive(Debug)]
struct OnDoneReg {
    anchor: Option<usize>,
    /// Whether the `OnDone` holds its anchor: only when it registered, i.e.
    /// the context was not done yet (`Maybe` under a near deadline).
    holds: Tri,
    /// The `OnDone` is still held.
    handle: bool,
    /// A `stop()` was called.
    stop_called: bool,
    /// A `stop()` returned true: `f` must never run.
    stopped: bool,
    /// Once stopped, dropped, or seen run: the run count can no longer
    /// change.
    frozen: Option<usize>,
}

/// Whether an after-func holds its anchor: its `AfterFunc` does while held
/// (until a `stop()` that returns true gives it up); the pending entry
/// itself does only when a deadline is on the anchor's path, until the
/// callback has run (the runner then lets go) or been stopped.
fn after_holds(after: &After, anchor_done: Tri, deadline_on_path: bool) -> Tri {
    if after.stopped {
        return Tri::No;
    }
    let by_handle = if after.handle { after.holds } else { Tri::No };
    let by_entry = match (deadline_on_path, anchor_done) {
        (false, _) => Tri::No,
        (true, Tri::No) => Tri::Yes,
        (true, _) => Tri::Maybe,
    };
    by_handle.or(by_entry)
}

/// What a round of checks compares with: see [`Model::snapshot`].
#[derive(Debug)]
pub(crate) struct Snapshot {
    anchors: Vec<Option<usize>>,
    registered: Vec<Bounds>,
    /// Live `Tracked` instances: values of live value nodes and closures of
    /// after-funcs that have neither run nor been stopped.
    pub(crate) live: Bounds,
}

impl Snapshot {
    /// `registered_children()` of `node`: its anchor's cancellable
    /// children that are neither done nor released.
    pub(crate) fn registered_children(&self, node: usize) -> Bounds {
        self.anchors[node].map_or(Bounds { min: 0, max: 0 }, |a| self.registered[a])
    }
}

/// Why an observation does not fit the model.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The context should be done but an expiry may still be propagating:
    /// wait (boundedly) and observe again.
    Wait(String),
    /// A definite difference from the model.
    Mismatch(String),
}

/// The model forest.
#[derive(Debug)]
pub(crate) struct Model {
    nodes: Vec<Node>,
    afters: Vec<After>,
    on_dones: Vec<OnDoneReg>,
    clock: u64,
}

impl Model {
    /// The two roots, `BACKGROUND` and `TODO`, each held by one context.
    pub(crate) fn new() -> Model {
        let root = |kind| Node {
            parent: None,
            kind,
            anchor: None,
            deadline: None,
            first_event: None,
            near: None,
            latched: None,
            contexts: 1,
            cancels: 0,
            pinned: true,
        };
        Model {
            nodes: vec![root(Kind::Background), root(Kind::Todo)],
            afters: Vec::new(),
            on_dones: Vec::new(),
            clock: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Adds a context derived from `parent`, held by one context and, if
    /// cancellable, one cancel handle; returns its index.
    pub(crate) fn derive(&mut self, parent: usize, how: Derive) -> usize {
        let index = self.nodes.len();
        let inherited = self.nodes[parent].deadline;
        let mut node = Node {
            parent: Some(parent),
            kind: Kind::Cancel,
            anchor: Some(index),
            deadline: inherited,
            first_event: None,
            near: None,
            latched: None,
            contexts: 1,
            cancels: 1,
            pinned: false,
        };
        match how {
            Derive::Cancel => {}
            Derive::Value { key, id } => {
                node.kind = Kind::Value { key, id };
                node.anchor = self.nodes[parent].anchor;
                node.cancels = 0;
            }
            Derive::WithoutCancel => {
                node.kind = Kind::WithoutCancel;
                node.anchor = None;
                node.deadline = None;
                node.cancels = 0;
            }
            Derive::Merge { other } => {
                // API.md 15: the earlier deadline; cancellable, a child of
                // `parent` that `other`'s cancellation also reaches.
                let theirs = self.nodes[other].deadline;
                node.deadline = match (inherited, theirs) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                node.kind = Kind::Merge {
                    other,
                    at: self.tick(),
                };
            }
            Derive::Deadline { at, expiry, cause } => {
                // API.md 7: a parent deadline not after `at` makes this a
                // plain `with_cancel` child.
                if inherited.is_none_or(|current| current > at) {
                    node.kind = Kind::Deadline;
                    node.deadline = Some(at);
                    let state = State::expired(cause);
                    match expiry {
                        Expiry::Past => {
                            node.first_event = Some(Event {
                                at: self.tick(),
                                state,
                            })
                        }
                        Expiry::Near => {
                            node.near = Some(Near {
                                deadline: at,
                                state,
                            })
                        }
                        Expiry::Far => {}
                    }
                }
            }
        }
        self.nodes.push(node);
        index
    }

    /// A `cancel()` on cancellable `node`.
    pub(crate) fn cancel(&mut self, node: usize, state: State) {
        assert!(self.is_cancellable(node), "model: cancel of {node}");
        if self.nodes[node].first_event.is_none() {
            let at = self.tick();
            self.nodes[node].first_event = Some(Event { at, state });
        }
    }

    pub(crate) fn is_cancellable(&self, node: usize) -> bool {
        matches!(
            self.nodes[node].kind,
            Kind::Cancel | Kind::Deadline | Kind::Merge { .. }
        )
    }

    pub(crate) fn contexts(&self, node: usize) -> usize {
        self.nodes[node].contexts
    }

    pub(crate) fn cancels(&self, node: usize) -> usize {
        self.nodes[node].cancels
    }

    pub(crate) fn set_contexts(&mut self, node: usize, contexts: usize) {
        self.nodes[node].contexts = contexts;
    }

    pub(crate) fn set_cancels(&mut self, node: usize, cancels: usize) {
        self.nodes[node].cancels = cancels;
    }

    pub(crate) fn set_pinned(&mut self, node: usize, pinned: bool) {
        self.nodes[node].pinned = pinned;
    }

    pub(crate) fn deadline(&self, node: usize) -> Option<Instant> {
        self.nodes[node].deadline
    }

    /// The id of the nearest `Val<key>` (API.md 5; `without_cancel` keeps
    /// values, API.md 6).
    pub(crate) fn value(&self, node: usize, key: usize) -> Option<u32> {
        let mut current = Some(node);
        while let Some(index) = current {
            if let Kind::Value { key: k, id } = self.nodes[index].kind
                && k == key
            {
                return Some(id);
            }
            current = self.nodes[index].parent;
        }
        None
    }

    /// The kinds from the root down to `node`: its `Display` segments.
    pub(crate) fn kinds(&self, node: usize) -> Vec<Kind> {
        let mut kinds = Vec::new();
        let mut current = Some(node);
        while let Some(index) = current {
            kinds.push(self.nodes[index].kind);
            current = self.nodes[index].parent;
        }
        kinds.reverse();
        kinds
    }

    /// The cancellable node on whose path a cancellation of `node` also
    /// lands by a merge link: `other`'s anchor, for a merged node.
    fn link(&self, node: usize) -> Option<usize> {
        match self.nodes[node].kind {
            Kind::Merge { other, .. } => self.nodes[other].anchor,
            _ => None,
        }
    }

    /// The cancellable nodes whose cancellation reaches `node`: its anchor,
    /// the anchor's nearest cancellable ancestor, and so on, and through a
    /// merged node also `other`'s path (API.md 15).
    fn path(&self, node: usize) -> std::vec::IntoIter<usize> {
        let mut path = Vec::new();
        let mut todo: Vec<usize> = self.nodes[node].anchor.into_iter().collect();
        while let Some(c) = todo.pop() {
            if path.contains(&c) {
                continue;
            }
            path.push(c);
            todo.extend(self.nodes[c].parent.and_then(|p| self.nodes[p].anchor));
            todo.extend(self.link(c));
        }
        path.into_iter()
    }

    /// The cancellation that makes cancellable `node` done, keyed by when it
    /// reached `node`: a cancellation of `other` that came before the
    /// merge reaches the merged node at the merge, after its parent's
    /// (which the derivation inherits first).
    fn earliest_key(&self, node: usize) -> Option<(u64, u8, State)> {
        let own = self.nodes[node].first_event.map(|e| (e.at, 0, e.state));
        let up = self.nodes[node]
            .parent
            .and_then(|p| self.nodes[p].anchor)
            .and_then(|a| self.earliest_key(a));
        let linked = match self.nodes[node].kind {
            Kind::Merge { at: merged, .. } => self
                .link(node)
                .and_then(|a| self.earliest_key(a))
                .map(|(at, rank, state)| {
                    if at < merged {
                        (merged, 1, state)
                    } else {
                        (at, rank, state)
                    }
                }),
            _ => None,
        };
        [own, up, linked]
            .into_iter()
            .flatten()
            .min_by_key(|&(at, rank, _)| (at, rank))
    }

    fn has_near(&self, node: usize) -> bool {
        self.path(node).any(|p| self.nodes[p].near.is_some())
    }

    /// The earliest cancellation on `node`'s path.
    fn earliest(&self, node: usize) -> Option<Event> {
        let anchor = self.nodes[node].anchor?;
        self.earliest_key(anchor)
            .map(|(at, _, state)| Event { at, state })
    }

    /// The state of `node`, if no near deadline on its path makes it
    /// timing-dependent.
    pub(crate) fn exact_state(&self, node: usize) -> Option<Option<State>> {
        if self.has_near(node) {
            None
        } else {
            Some(self.earliest(node).map(|event| event.state))
        }
    }

    fn done(&self, node: usize) -> Tri {
        let Some(anchor) = self.nodes[node].anchor else {
            return Tri::No;
        };
        if self.nodes[anchor].latched.is_some() {
            Tri::Yes
        } else {
            match self.exact_state(node) {
                None => Tri::Maybe,
                Some(state) => {
                    if state.is_some() {
                        Tri::Yes
                    } else {
                        Tri::No
                    }
                }
            }
        }
    }

    /// Checks an observation of `node` (taken before `now`) and, if it fits,
    /// records it.
    pub(crate) fn check(
        &mut self,
        node: usize,
        seen: Option<State>,
        now: Instant,
    ) -> Result<(), Verdict> {
        let Some(anchor) = self.nodes[node].anchor else {
            return match seen {
                None => Ok(()),
                Some(state) => Err(Verdict::Mismatch(format!(
                    "context {node} can never be done, but is: {state:?}"
                ))),
            };
        };
        if let Some(latched) = self.nodes[anchor].latched {
            return if seen == Some(latched) {
                Ok(())
            } else {
                Err(Verdict::Mismatch(format!(
                    "context {node} changed state: was {latched:?}, now {seen:?}"
                )))
            };
        }
        match self.exact_state(node) {
            Some(expected) => {
                if seen != expected {
                    return Err(Verdict::Mismatch(format!(
                        "context {node}: expected {expected:?}, got {seen:?}"
                    )));
                }
            }
            None => self.check_uncertain(node, seen, now)?,
        }
        if seen.is_some() {
            self.nodes[anchor].latched = seen;
        }
        Ok(())
    }

    fn check_uncertain(
        &self,
        node: usize,
        seen: Option<State>,
        now: Instant,
    ) -> Result<(), Verdict> {
        let nears: Vec<Near> = self.path(node).filter_map(|p| self.nodes[p].near).collect();
        match seen {
            None => {
                if let Some(event) = self.earliest(node) {
                    return Err(Verdict::Wait(format!(
                        "context {node} not done after {:?} on its path returned",
                        event.state
                    )));
                }
                if let Some(seen) = self.path(node).find(|&p| self.nodes[p].latched.is_some()) {
                    return Err(Verdict::Wait(format!(
                        "context {node} not done though {seen} on its path is"
                    )));
                }
                if nears.iter().any(|near| near.deadline + EXPIRY_SLACK < now) {
                    return Err(Verdict::Wait(format!(
                        "context {node} not done though a deadline on its path passed"
                    )));
                }
                Ok(())
            }
            Some(state) => {
                let by_cancel = self
                    .path(node)
                    .filter_map(|p| self.nodes[p].first_event)
                    .any(|event| event.state == state);
                let by_expiry = nears.iter().any(|n| n.state == state && n.deadline <= now);
                if by_cancel || by_expiry {
                    Ok(())
                } else if nears.iter().any(|n| n.state == state) {
                    Err(Verdict::Mismatch(format!(
                        "context {node} is {state:?} before its deadline passed"
                    )))
                } else {
                    Err(Verdict::Mismatch(format!(
                        "context {node} is {state:?}, from no cancellation on its path"
                    )))
                }
            }
        }
    }

    /// Whether each node is alive (held by a handle, a descendant, an
    /// after-func or, for a moment, the timer).
    fn alive(&self, done: &[Tri]) -> Vec<Tri> {
        let mut alive: Vec<Tri> = self
            .nodes
            .iter()
            .map(|n| {
                if n.contexts > 0 || n.cancels > 0 || n.pinned {
                    Tri::Yes
                } else {
                    Tri::No
                }
            })
            .collect();
        for after in &self.afters {
            if let Some(anchor) = after.anchor {
                let deadline = self.deadline_on_path(anchor);
                alive[anchor] = alive[anchor].or(after_holds(after, done[anchor], deadline));
            }
        }
        // A held `OnDone` that registered holds its anchor (as a `Done`).
        for on_done in &self.on_dones {
            if let Some(anchor) = on_done.anchor
                && on_done.handle
                && !on_done.stopped
            {
                alive[anchor] = alive[anchor].or(on_done.holds);
            }
        }
        // Children come after their parents (and merged nodes after
        // `other`) in the arena.
        for index in (0..self.nodes.len()).rev() {
            let timer = self.nodes[index].near.is_some()
                || self.link(index).is_some_and(|a| self.has_near(a));
            if timer && alive[index] == Tri::No {
                // The timer thread holds an expiring node (or a merged node
                // its expiry cancels) for a moment.
                alive[index] = Tri::Maybe;
            }
            if let Some(parent) = self.nodes[index].parent {
                alive[parent] = alive[parent].or(alive[index]);
            }
            // A merged node holds `other` (src/merge.rs).
            if let Kind::Merge { other, .. } = self.nodes[index].kind {
                alive[other] = alive[other].or(alive[index]);
            }
        }
        alive
    }

    /// Liveness, done-ness and registrations of every node, for one round
    /// of checks (API.md 10).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let done: Vec<Tri> = (0..self.nodes.len()).map(|i| self.done(i)).collect();
        let alive = self.alive(&done);
        // A cancellable node is registered with its parent's anchor while it
        // is neither done nor released.
        let mut registered = vec![Bounds { min: 0, max: 0 }; self.nodes.len()];
        for (index, node) in self.nodes.iter().enumerate() {
            let cancellable = node.anchor == Some(index);
            if let Some(anchor) = node.parent.and_then(|p| self.nodes[p].anchor)
                && cancellable
            {
                registered[anchor].add(match (done[index], alive[index]) {
                    (Tri::Yes, _) | (_, Tri::No) => Tri::No,
                    (Tri::No, Tri::Yes) => Tri::Yes,
                    _ => Tri::Maybe,
                });
            }
        }
        for (index, bounds) in registered.iter_mut().enumerate() {
            match done[index] {
                Tri::Yes => *bounds = Bounds { min: 0, max: 0 },
                Tri::Maybe => bounds.min = 0,
                Tri::No => {}
            }
        }
        let mut live = Bounds { min: 0, max: 0 };
        for (node, alive) in self.nodes.iter().zip(&alive) {
            if matches!(node.kind, Kind::Value { .. }) {
                live.add(*alive);
            }
        }
        for after in &self.afters {
            live.add(match after.anchor {
                _ if after.stopped => Tri::No,
                // Never notified: freed with its last handle.
                None if after.handle => Tri::Yes,
                None => Tri::No,
                // Pending while its context lives; dropped unrun with it.
                Some(anchor) => match done[anchor] {
                    Tri::No => alive[anchor],
                    _ => Tri::Maybe,
                },
            });
        }
        Snapshot {
            anchors: self.nodes.iter().map(|n| n.anchor).collect(),
            registered,
            live,
        }
    }

    /// An `after_func` on context `node`; returns its index.
    pub(crate) fn after_func(&mut self, node: usize) -> usize {
        let anchor = self.nodes[node].anchor;
        let holds = match anchor.map(|a| self.done(a)) {
            None | Some(Tri::Yes) => Tri::No,
            Some(Tri::No) => Tri::Yes,
            Some(Tri::Maybe) => Tri::Maybe,
        };
        self.afters.push(After {
            anchor: self.nodes[node].anchor,
            stop_called: false,
            stopped: false,
            handle: true,
            orphaned: Tri::No,
            holds,
        });
        self.afters.len() - 1
    }

    pub(crate) fn set_after_handle(&mut self, after: usize, held: bool) {
        self.afters[after].handle = held;
    }

    /// Whether `node` has a deadline (near or far, its own, inherited or
    /// merged): then a pending after-func keeps the context alive until it
    /// runs.
    fn deadline_on_path(&self, node: usize) -> bool {
        self.nodes[node].deadline.is_some()
    }

    /// Checks and records what `stop()` returned (API.md 8).
    pub(crate) fn stop(&mut self, after: usize, returned: bool) -> Result<(), String> {
        let expected = {
            let a = &self.afters[after];
            if a.stop_called {
                Some(false)
            } else {
                match a.anchor {
                    None => Some(true),
                    Some(anchor) => self.exact_state(anchor).map(|state| state.is_none()),
                }
            }
        };
        let a = &mut self.afters[after];
        a.stop_called = true;
        a.stopped |= returned;
        match expected {
            Some(expected) if expected != returned => Err(format!(
                "after-func {after}: stop() returned {returned}, expected {expected}"
            )),
            _ => Ok(()),
        }
    }

    /// Checks an after-func's run count: at most once, never once stopped,
    /// never before its context is done.
    pub(crate) fn check_runs(&self, after: usize, runs: usize) -> Result<(), String> {
        let a = &self.afters[after];
        if runs > 1 {
            return Err(format!("after-func {after} ran {runs} times"));
        }
        if runs == 1 && a.stopped {
            return Err(format!("after-func {after} ran after stop() returned true"));
        }
        if runs == 1 && a.orphaned == Tri::Yes {
            return Err(format!(
                "after-func {after} ran though its context was released before it was done"
            ));
        }
        if runs == 1 {
            let done = a.anchor.map(|anchor| self.done(anchor));
            if matches!(done, None | Some(Tri::No)) {
                return Err(format!(
                    "after-func {after} ran before its context was done"
                ));
            }
        }
        Ok(())
    }

    /// Records after-funcs whose context has just been released while not
    /// done: they will never run. Call after every drop of a handle.
    pub(crate) fn note_releases(&mut self) {
        let done: Vec<Tri> = (0..self.nodes.len()).map(|i| self.done(i)).collect();
        let alive = self.alive(&done);
        for after in &mut self.afters {
            if let Some(anchor) = after.anchor
                && !after.stopped
                && done[anchor] != Tri::Yes
            {
                let released = match alive[anchor] {
                    Tri::No => Tri::Yes,
                    Tri::Maybe => Tri::Maybe,
                    Tri::Yes => Tri::No,
                };
                after.orphaned = after.orphaned.or(released);
            }
        }
    }

    /// An `on_done` on context `node`; returns its index. The caller checks
    /// [`Model::check_on_done`] right after it returns: `f` has run before
    /// `on_done` returned iff the context was done.
    pub(crate) fn on_done(&mut self, node: usize) -> usize {
        let anchor = self.nodes[node].anchor;
        let holds = match anchor.map(|a| self.done(a)) {
            None | Some(Tri::Yes) => Tri::No,
            Some(Tri::No) => Tri::Yes,
            Some(Tri::Maybe) => Tri::Maybe,
        };
        self.on_dones.push(OnDoneReg {
            anchor,
            holds,
            handle: true,
            stop_called: false,
            stopped: false,
            frozen: None,
        });
        self.on_dones.len() - 1
    }

    /// Checks and records what `OnDone::stop()` returned, with the run
    /// count right after it returned (it waits for a running `f`): true
    /// exactly when `f` had not run and the context was not done (the first
    /// call on a never-done context is true too); false means `f` has run,
    /// or an earlier `stop()` came first.
    pub(crate) fn stop_on_done(
        &mut self,
        index: usize,
        returned: bool,
        runs: usize,
    ) -> Result<(), String> {
        let reg = &self.on_dones[index];
        let expected = if reg.stop_called {
            Some(false)
        } else {
            match reg.anchor {
                None => Some(true),
                Some(anchor) => self.exact_state(anchor).map(|state| state.is_none()),
            }
        };
        let first = !reg.stop_called;
        let reg = &mut self.on_dones[index];
        reg.stop_called = true;
        reg.stopped |= returned;
        if let Some(expected) = expected
            && expected != returned
        {
            return Err(format!(
                "on-done {index}: stop() returned {returned}, expected {expected}"
            ));
        }
        match (first, returned, runs) {
            (_, true, 0) | (false, false, _) => {}
            (true, false, 1) if reg.anchor.is_some() => {}
            _ => {
                return Err(format!(
                    "on-done {index}: stop() returned {returned} with f run {runs} times"
                ));
            }
        }
        reg.frozen.get_or_insert(runs);
        Ok(())
    }

    /// Records that an `OnDone` was dropped (which stops `f`, waiting for
    /// it if running) with `f` run `runs` times: the count is final.
    pub(crate) fn drop_on_done(&mut self, index: usize, runs: usize) {
        let reg = &mut self.on_dones[index];
        reg.handle = false;
        if runs == 0 {
            reg.stopped = true;
        }
        reg.frozen.get_or_insert(runs);
    }

    /// Checks an `on_done` callback's run count: at most once; never once
    /// stopped or dropped unrun; never for a never-done context; on an
    /// exact path (no near deadline) exactly once iff the context is done,
    /// so at once when registered on a done context and inside the
    /// `cancel()` that made it done.
    pub(crate) fn check_on_done(&mut self, index: usize, runs: usize) -> Result<(), String> {
        let reg = &self.on_dones[index];
        if runs > 1 {
            return Err(format!("on-done {index}: f ran {runs} times"));
        }
        if let Some(frozen) = reg.frozen {
            if runs != frozen {
                return Err(format!(
                    "on-done {index}: f ran {runs} times, {frozen} when it was settled"
                ));
            }
            return Ok(());
        }
        let Some(anchor) = reg.anchor else {
            return if runs == 0 {
                Ok(())
            } else {
                Err(format!("on-done {index}: f ran on a context never done"))
            };
        };
        let expected = match self.done(anchor) {
            Tri::Yes if self.exact_state(anchor).is_some() => Some(1),
            Tri::No => Some(0),
            _ => None,
        };
        if let Some(expected) = expected
            && runs != expected
        {
            return Err(format!(
                "on-done {index}: f ran {runs} times, the model says {expected}"
            ));
        }
        if runs == 1 {
            self.on_dones[index].frozen = Some(1);
        }
        Ok(())
    }

    /// The `on_done` registrations whose `f` must run once every near
    /// deadline has passed (held, not stopped, context done by then).
    pub(crate) fn on_done_runs_eventually(&self, index: usize) -> bool {
        let reg = &self.on_dones[index];
        match reg.anchor {
            Some(anchor) if reg.handle && !reg.stopped => {
                self.earliest(anchor).is_some() || self.has_near(anchor)
            }
            _ => false,
        }
    }

    /// Whether an after-func runs once every near deadline has passed.
    pub(crate) fn runs_eventually(&self, after: usize) -> bool {
        let a = &self.afters[after];
        if a.orphaned != Tri::No {
            return false;
        }
        match a.anchor {
            Some(anchor) if !a.stopped => self.earliest(anchor).is_some() || self.has_near(anchor),
            _ => false,
        }
    }

    /// The latest near deadline of the run.
    pub(crate) fn latest_near(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .filter_map(|n| n.near.map(|near| near.deadline))
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// background → parent → value → child.
    fn cancel_tree() -> (Model, usize, usize, usize) {
        let mut model = Model::new();
        let parent = model.derive(BACKGROUND, Derive::Cancel);
        let value = model.derive(parent, Derive::Value { key: 0, id: 7 });
        let child = model.derive(value, Derive::Cancel);
        (model, parent, value, child)
    }

    #[test]
    fn model_predicts_propagation_and_first_cancel_wins() {
        let (mut model, parent, _, child) = cancel_tree();
        let now = Instant::now();
        model.check(child, None, now).unwrap();
        model.cancel(parent, State::canceled(Some(CauseId::Tag(1))));
        model.cancel(child, State::canceled(None));
        let seen = Some(State::canceled(Some(CauseId::Tag(1))));
        model.check(child, seen, now).unwrap();
        assert!(model.check(child, None, now).is_err());
        assert_eq!(model.value(child, 0), Some(7));
        assert_eq!(model.value(parent, 0), None);
    }

    #[test]
    fn model_rejects_wrong_cause_and_early_expiry() {
        let (mut model, parent, _, child) = cancel_tree();
        let now = Instant::now();
        model.cancel(parent, State::canceled(None));
        let wrong = Some(State::canceled(Some(CauseId::Tag(9))));
        assert!(model.check(child, wrong, now).is_err());

        let mut model = Model::new();
        let far = now + Duration::from_secs(3600);
        let near = model.derive(
            BACKGROUND,
            Derive::Deadline {
                at: far,
                expiry: Expiry::Near,
                cause: None,
            },
        );
        let early = Some(State::expired(None));
        assert!(matches!(
            model.check(near, early, now),
            Err(Verdict::Mismatch(_))
        ));
        model.check(near, None, now).unwrap();
    }

    #[test]
    fn model_counts_registered_children() {
        let (mut model, parent, value, child) = cancel_tree();
        let one = Bounds { min: 1, max: 1 };
        let none = Bounds { min: 0, max: 0 };
        let snapshot = model.snapshot();
        assert_eq!(snapshot.registered_children(parent), one);
        assert_eq!(snapshot.live, one);
        model.set_contexts(value, 0);
        // The child holds the value layer.
        assert_eq!(model.snapshot().live, one);
        model.set_contexts(child, 0);
        model.set_cancels(child, 0);
        let snapshot = model.snapshot();
        assert_eq!(snapshot.registered_children(parent), none);
        assert_eq!(snapshot.live, none);
    }
}
