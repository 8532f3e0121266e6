//! The one response body type: a buffer keyward wrote, or an upstream's
//! stream. An enum rather than a boxed body, so no response allocates for
//! its body type.

use crate::proxy::{BoxError, UpstreamBody};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A response body.
pub enum Body {
    /// Bytes keyward produced (error documents, JSON answers, metrics).
    Full(Option<Bytes>),
    /// Streamed from the upstream; returns its connection to the pool at the end.
    Upstream(UpstreamBody),
    /// Produced by the admin API's router.
    Admin(axum::body::Body),
}

impl Body {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Body::Full((!bytes.is_empty()).then_some(bytes))
    }

    /// No body.
    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Body::Upstream(b) => Pin::new(b).poll_frame(cx),
            Body::Admin(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(bytes) => bytes.is_none(),
            Body::Upstream(b) => b.is_end_stream(),
            Body::Admin(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Upstream(b) => b.size_hint(),
            Body::Admin(b) => b.size_hint(),
        }
    }
}
