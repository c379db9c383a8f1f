//! A crossbeam-channel worker pool whose workers stop on cancellation: the
//! pattern to copy for plain-thread services.
//!
//! * One root context is the pool's shutdown switch. Each worker waits in
//!   `crossbeam_channel::select!` on the job channel *and* on the root's
//!   `done().receiver()` (cargo feature `crossbeam-channel`), a channel the
//!   cancellation itself disconnects, so an idle worker leaves at once, and
//!   a busy one sees its job's context cancelled.
//! * Every job runs under its own child context with a per-job timeout; the
//!   job checks it between steps with `ctx.check()?` and waits with
//!   `ctx.done().wait_timeout(..)` instead of sleeping.
//!
//! ```text
//! cargo run --release --example worker_pool
//! ```

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, unbounded};
use goctx::{Cause, Context, ContextError};

/// A job: `steps` units of `step` work each.
struct Job {
    id: u32,
    steps: u32,
    step: Duration,
}

/// One unit of work that honours the context: "work" is a wait that ends
/// early when the context is done.
fn do_step(ctx: &Context, step: Duration) -> Result<(), ContextError> {
    ctx.check()?;
    if ctx.done().wait_timeout(step) {
        ctx.check()?;
    }
    Ok(())
}

fn run_job(ctx: &Context, job: &Job) -> Result<u32, ContextError> {
    for _ in 0..job.steps {
        do_step(ctx, job.step)?;
    }
    Ok(job.steps)
}

fn main() {
    const WORKERS: usize = 4;
    const JOB_TIMEOUT: Duration = Duration::from_millis(40);

    let (pool, shutdown) = Context::background().with_cancel_cause();
    // Disconnected inside `shutdown.cancel(..)`: no thread, no polling.
    let shutting_down = pool.done().receiver();
    let (jobs, queue) = unbounded::<Job>();
    let (report, reports) = unbounded::<(u32, Result<u32, ContextError>)>();

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (pool, queue, shutting_down, report) = (
                pool.clone(),
                queue.clone(),
                shutting_down.clone(),
                report.clone(),
            );
            thread::spawn(move || {
                loop {
                    select! {
                        recv(queue) -> job => {
                            let Ok(job) = job else { return };
                            // `select!` picks at random among ready
                            // channels: do not start a job once shut down.
                            if pool.is_done() {
                                return;
                            }
                            let (ctx, _cancel) = pool.with_timeout(JOB_TIMEOUT);
                            let _ = report.send((job.id, run_job(&ctx, &job)));
                        }
                        // Disconnected: the pool is shutting down.
                        recv(shutting_down) -> _ => return,
                    }
                }
            })
        })
        .collect();
    drop(report);

    // Jobs of 1 to 8 steps of 8 ms: the long ones hit the 40 ms timeout, and
    // those still queued at shutdown are never started.
    const JOBS: u32 = 24;
    for id in 0..JOBS {
        let steps = 1 + id % 8;
        jobs.send(Job {
            id,
            steps,
            step: Duration::from_millis(8),
        })
        .expect("workers are running");
    }
    thread::sleep(Duration::from_millis(120));
    let stopping = Instant::now();
    shutdown.cancel(Cause::msg("pool shutting down"));
    for worker in workers {
        worker.join().expect("workers do not panic");
    }
    let stopped_in = stopping.elapsed();

    let (mut finished, mut timed_out, mut cut_off) = (0, 0, 0);
    for (id, result) in reports {
        match result {
            Ok(steps) => {
                finished += 1;
                println!("job {id:2}: finished {steps} steps");
            }
            Err(e) if e.is_timeout() => {
                timed_out += 1;
                println!("job {id:2}: {e}");
            }
            Err(e) => {
                cut_off += 1;
                println!("job {id:2}: {e}");
            }
        }
    }
    println!(
        "{finished} finished, {timed_out} timed out, {cut_off} cut off by shutdown, \
         {} never started; all {WORKERS} workers stopped {stopped_in:?} after cancel()",
        JOBS - finished - timed_out - cut_off
    );
}
