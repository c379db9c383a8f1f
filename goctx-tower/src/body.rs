//! The response body of the server layer: the handler's body, holding the
//! end of the request's context until the body is complete; or the short
//! body of a rejection.

use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use goctx::CancelCauseFunc;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::end::RequestEnd;

pin_project! {
    /// The response body of [`ContextService`](crate::ContextService).
    ///
    /// For a handled request it is the handler's body, and the request's
    /// context ends when it does: with [`RequestEnd::HandlerFinished`] once
    /// the body has yielded its last frame (or an error, or is dropped
    /// already at its end), with [`RequestEnd::CallerGone`] if it is dropped
    /// before (the connection closed mid-stream).
    pub struct ServerBody<B: Body> {
        #[pin]
        kind: Kind<B>,
        end: Option<CancelCauseFunc>,
    }

    impl<B: Body> PinnedDrop for ServerBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(end) = this.end.take() {
                let finished = match this.kind.as_ref().project_ref() {
                    KindRef::Inner { body } => body.is_end_stream(),
                    KindRef::Rejection { .. } => true,
                };
                let why = if finished {
                    RequestEnd::HandlerFinished
                } else {
                    RequestEnd::CallerGone
                };
                end.cancel(why.cause());
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    #[project_ref = KindRef]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Rejection { data: Option<Bytes> },
    }
}

impl<B: Body> ServerBody<B> {
    /// The handler's body, ending the request's context (if any) with it.
    pub(crate) fn new(body: B, end: Option<CancelCauseFunc>) -> ServerBody<B> {
        ServerBody {
            kind: Kind::Inner { body },
            end,
        }
    }

    /// The body of a rejection: `data` or nothing.
    pub(crate) fn rejection(data: Option<Bytes>) -> ServerBody<B> {
        ServerBody {
            kind: Kind::Rejection { data },
            end: None,
        }
    }
}

impl<B> Body for ServerBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Inner { body } => {
                let frame = core::task::ready!(body.poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    // The end, or an error: the handler's work is over.
                    if let Some(end) = this.end.take() {
                        end.cancel(RequestEnd::HandlerFinished.cause());
                    }
                }
                Poll::Ready(frame)
            }
            KindProj::Rejection { data } => {
                Poll::Ready(data.take().map(|data| Ok(Frame::data(B::Data::from(data)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Rejection { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Rejection { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |data| data.len() as u64))
            }
        }
    }
}

impl<B: Body> core::fmt::Debug for ServerBody<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let kind = match self.kind {
            Kind::Inner { .. } => "handler",
            Kind::Rejection { .. } => "rejection",
        };
        f.debug_struct("ServerBody")
            .field("kind", &kind)
            .field("end", &self.end)
            .finish()
    }
}
