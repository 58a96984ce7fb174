//! Calls through hyper's pooled client: any downstream (TLS, h2, streamed
//! bodies) to an http:// or https:// upstream. Bodies are never buffered:
//! the downstream `Incoming` becomes the upstream request body and the
//! upstream `Incoming` the downstream answer's body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::capture_connection;
use hyper_util::client::legacy::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{forwarding, Connector, Forwarding, UpstreamError};
use crate::body::{Body, BoxError};

/// hyper's pooled client to the upstream.
pub struct HyperClient {
    pub(super) client: Client<Connector, Body>,
    pub(super) scheme: Scheme,
    pub(super) authority: Authority,
    pub(super) timeout: Duration,
}

impl HyperClient {
    /// Sends `req` upstream and returns its response, streaming.
    pub async fn send(
        &self,
        f: &Forwarding<'_>,
        mut parts: Parts,
        incoming: Incoming,
    ) -> Result<Response<Body>, UpstreamError> {
        let head_only = parts.method == http::Method::HEAD;
        let path = f.path.unwrap_or(parts.uri.path());
        let pq = match parts.uri.query() {
            Some(q) => {
                let mut s = String::with_capacity(path.len() + 1 + q.len());
                s.push_str(path);
                s.push('?');
                s.push_str(q);
                PathAndQuery::try_from(s)
            }
            None => PathAndQuery::try_from(path),
        }
        .map_err(|_| UpstreamError::Protocol)?;
        parts.uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| UpstreamError::Protocol)?;
        // Whatever the downstream spoke (h2 included), the pool speaks HTTP/1.1.
        parts.version = Version::HTTP_11;
        forwarding::edit_request(&mut parts.headers, f);

        // The request body: cut when the client pauses longer than
        // `body_idle` (else a trickling upload holds this connection and an
        // upstream one forever), capped at `max_body_bytes`, and telling the
        // timer below whom the call waits on.
        let (waiting, waits_on) = watch::channel(Some(Instant::now()));
        let incoming = IdleCut::new(incoming, f.body_idle, |_| BoxError::from(DownstreamStalled));
        let incoming = Tracked { inner: incoming, waiting };
        let body: Body = Limited::new(incoming, usize::try_from(f.max_body_bytes).unwrap_or(usize::MAX))
            .map_err(|e| match e.downcast::<hyper::Error>() {
                // Tagged so that `classify_error` can tell a broken downstream
                // body from a broken upstream.
                Ok(e) => BoxError::from(DownstreamBodyError(*e)),
                Err(e) => e,
            })
            .boxed();
        // Late bytes after an answer without a body (a buggy upstream's body
        // to a HEAD, a 204, a 304) would reach the next call on a reused
        // connection, maybe another tenant's: a HEAD's connection closes
        // after its answer, and one that brought a 204 or 304 is poisoned
        // (never handed out again), as the raw pool drops such a socket.
        if head_only {
            parts.headers.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        let mut req = Request::from_parts(parts, body);
        let connection = capture_connection(&mut req);
        // `timeout_ms` runs while the call waits on the upstream, not on the
        // client: an upload that takes longer but keeps moving is not a 504,
        // and an upstream that stops reading the body is.
        let rsp = tokio::select! {
            r = self.client.request(req) => r,
            () = upstream_deadline(waits_on, self.timeout) => return Err(UpstreamError::Timeout),
        };
        let rsp = rsp.map_err(|e| classify_error(&e))?;
        let (mut parts, incoming) = rsp.into_parts();
        if matches!(parts.status.as_u16(), 204 | 304) {
            if let Some(c) = connection.connection_metadata().as_ref() {
                c.poison();
            }
        }
        forwarding::edit_answer(&mut parts, head_only).map_err(|_| UpstreamError::Protocol)?;
        let body = IdleCut::new(incoming, self.timeout, |idle| {
            BoxError::from(format!("upstream body stalled for {} ms", idle.as_millis()))
        });
        Ok(Response::from_parts(parts, body.boxed()))
    }
}

fn classify_error(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    if e.is_connect() {
        return UpstreamError::Connect;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return UpstreamError::BodyTooLarge;
        }
        if s.is::<DownstreamBodyError>() {
            return UpstreamError::DownstreamBody;
        }
        if s.is::<DownstreamStalled>() {
            return UpstreamError::DownstreamStalled;
        }
        source = s.source();
    }
    UpstreamError::Protocol
}

/// A downstream body error, as the upstream client reports it.
#[derive(Debug, thiserror::Error)]
#[error("downstream body: {0}")]
struct DownstreamBodyError(hyper::Error);

/// The request body stopped arriving for longer than the body idle limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled")]
struct DownstreamStalled;

/// A body that fails with `stalled()` when its source sends nothing for
/// `idle` while it is being waited on. On the upstream's response body it
/// keeps an upstream that stalls mid-body from holding the downstream
/// connection, its task and a pooled connection forever; on the request body,
/// a client that trickles its upload. The clock runs only while the body is
/// polled and has nothing, so a slow reader on the other side is not
/// mistaken for a slow writer.
struct IdleCut<B> {
    inner: B,
    idle: Duration,
    /// Makes the error a stall ends the body with (given `idle`).
    stalled: fn(Duration) -> BoxError,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> IdleCut<B> {
    fn new(inner: B, idle: Duration, stalled: fn(Duration) -> BoxError) -> IdleCut<B> {
        IdleCut { inner, idle, stalled, deadline: None }
    }
}

impl<B> http_body::Body for IdleCut<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = this.idle;
        let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err((this.stalled)(idle)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Passes the request body through and says whom the call waits on: `None`
/// while the client owes the next piece (the idle cut's business), `Some(t)`
/// since `t`, while the upstream holds what it was given and owes the next
/// read or the answer.
struct Tracked<B> {
    inner: B,
    waiting: watch::Sender<Option<Instant>>,
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        this.waiting.send_replace(match frame {
            Poll::Pending => None,
            Poll::Ready(_) => Some(Instant::now()),
        });
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Returns once the call has waited on the upstream for `timeout` in one go
/// (see [`Tracked`]); never while the client is the one behind.
async fn upstream_deadline(mut waits_on: watch::Receiver<Option<Instant>>, timeout: Duration) {
    loop {
        let since = *waits_on.borrow_and_update();
        match since {
            Some(t) => {
                tokio::select! {
                    () = tokio::time::sleep_until(t + timeout) => return,
                    changed = waits_on.changed() => {
                        // The body is gone (all sent): only the answer is owed.
                        if changed.is_err() {
                            tokio::time::sleep_until(t + timeout).await;
                            return;
                        }
                    }
                }
            }
            None => {
                if waits_on.changed().await.is_err() {
                    // Dropped while the client owed a piece: the call is
                    // failing on that side already; nothing to time here.
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
