//! A thread pool whose workers stop on cancellation: the pattern to copy for
//! plain-thread services.
//!
//! * One root context is the pool's shutdown switch. An `after_func` on it
//!   closes the job channel, so idle workers blocked in `recv()` wake up and
//!   exit; busy workers see their job's context cancelled.
//! * Every job runs under its own child context with a per-job timeout; the
//!   job checks it between steps with `ctx.check()?`, and waits with
//!   `ctx.done().wait_timeout(..)` instead of sleeping.
//!
//! ```text
//! cargo run --release --example worker_pool
//! ```

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

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
    let (jobs, queue) = mpsc::channel::<Job>();
    // Workers share the receiving end; the sender sits in a slot that the
    // shutdown callback empties, which closes the channel.
    let queue = Arc::new(Mutex::new(queue));
    let sender = Arc::new(Mutex::new(Some(jobs)));
    let _close_on_shutdown = pool.after_func({
        let sender = Arc::clone(&sender);
        move || drop(sender.lock().unwrap().take())
    });

    let (report, reports) = mpsc::channel::<(u32, Result<u32, ContextError>)>();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let pool = pool.clone();
            let queue = Arc::clone(&queue);
            let report = report.clone();
            thread::spawn(move || {
                loop {
                    let next = queue.lock().unwrap().recv();
                    let Ok(job) = next else { return }; // closed: shutting down
                    let (ctx, _cancel) = pool.with_timeout(JOB_TIMEOUT);
                    let _ = report.send((job.id, run_job(&ctx, &job)));
                }
            })
        })
        .collect();
    drop(report);

    // Jobs of 1 to 8 steps of 8 ms: the long ones hit the 40 ms timeout.
    for id in 0..24 {
        let job = Job {
            id,
            steps: 1 + id % 8,
            step: Duration::from_millis(8),
        };
        if let Some(jobs) = sender.lock().unwrap().as_ref() {
            jobs.send(job).expect("workers are running");
        }
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
        "{finished} finished, {timed_out} timed out, {cut_off} cut off by shutdown; \
         all {WORKERS} workers stopped {stopped_in:?} after cancel()"
    );
}
