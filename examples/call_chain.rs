//! A library-style call chain: every function takes `&Context`, gives each
//! step a deadline of its own (never later than the caller's), and returns
//! errors with `?` — the context's error converts into the library's error
//! type through `From<ContextError>`.
//!
//! ```text
//! cargo run --release --example call_chain
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use goctx::{Context, ContextError};

/// The library's error type.
#[derive(Debug)]
enum FetchError {
    /// The caller gave up (cancelled or out of time).
    Context(ContextError),
    /// The backend answered with an error.
    Backend(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Context(e) => write!(f, "gave up: {e}"),
            FetchError::Backend(e) => write!(f, "backend: {e}"),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FetchError::Context(e) => Some(e),
            FetchError::Backend(_) => None,
        }
    }
}

impl From<ContextError> for FetchError {
    fn from(e: ContextError) -> Self {
        FetchError::Context(e)
    }
}

/// A backend call that takes `cost`, or less if the context ends first.
fn backend(ctx: &Context, cost: Duration, what: &str) -> Result<String, FetchError> {
    ctx.check()?;
    if ctx.done().wait_timeout(cost) {
        ctx.check()?;
    }
    if what.is_empty() {
        return Err(FetchError::Backend("empty key".into()));
    }
    Ok(format!("{what}@{}ms", cost.as_millis()))
}

/// Two steps with budgets of their own, both inside the caller's deadline.
fn fetch_profile(ctx: &Context, user: &str, db_cost: Duration) -> Result<String, FetchError> {
    let (step, _cancel) = ctx.with_timeout(Duration::from_millis(30));
    let row = backend(&step, db_cost, user)?;
    let (step, _cancel) = ctx.with_timeout(Duration::from_millis(20));
    let avatar = backend(&step, Duration::from_millis(5), "avatar")?;
    Ok(format!("{row} + {avatar}"))
}

fn handle_request(ctx: &Context, user: &str, db_cost: Duration) -> Result<String, FetchError> {
    // The whole request: 50 ms.
    let (ctx, _cancel) = ctx.with_timeout(Duration::from_millis(50));
    let remaining = ctx
        .deadline()
        .map(|d| d.saturating_duration_since(Instant::now()));
    println!("  request deadline in {remaining:?}");
    fetch_profile(&ctx, user, db_cost)
}

fn main() {
    let root = Context::background();
    for (user, cost) in [
        ("ada", Duration::from_millis(5)),  // fits every budget
        ("bob", Duration::from_millis(45)), // the 30 ms db step times out
        ("", Duration::from_millis(1)),     // the backend fails
    ] {
        println!("user {user:?}, db takes {cost:?}:");
        match handle_request(&root, user, cost) {
            Ok(profile) => println!("  ok: {profile}"),
            Err(e) => {
                let timeout = matches!(&e, FetchError::Context(c) if c.is_timeout());
                println!("  error: {e} (timeout: {timeout})");
            }
        }
    }
}
