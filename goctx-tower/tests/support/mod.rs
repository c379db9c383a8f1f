//! Shared pieces of the integration tests: a `tower_service::Service` from
//! a closure, bodies with known behaviour, and a bounded wait.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};

/// A `Service` calling `f` (tower's `service_fn`, without tower's
/// `util` feature and its dependencies).
#[derive(Clone)]
pub struct ServiceFn<F>(pub F);

pub fn service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn(f)
}

impl<F, Req, Fut, Res, E> tower_service::Service<Req> for ServiceFn<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Res, E>>,
{
    type Response = Res;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Fut {
        (self.0)(request)
    }
}

/// A body that yields one frame, then never ends (a stream the handler
/// keeps open).
#[derive(Debug)]
pub struct Endless {
    pub first: Option<Bytes>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// The hang guard of the tests' waits: generous (a noisy 2-core machine,
/// sanitizers); a passing test never waits for it.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test with `what` if it hangs.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG_GUARD:?}: {what}"),
    }
}
