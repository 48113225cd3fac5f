//! Server-Sent Events (`GET /sse`): the messages of a topic, several topics or an MQTT filter
//! as they are committed, from a cursor on. Each event's `id:` is the message's cursor, so a
//! browser's `EventSource` that reconnects sends it back as `Last-Event-ID` and resumes after
//! it; the stream opens with a `retry:` hint and sends a keep-alive comment when idle. A
//! cursor of an earlier incarnation of the topic first sends an event `reset`.
//!
//! Owns the event stream only: what is read and how a cursor goes on is `poll.rs`'s (the same
//! reads and waits as a long-poll that never times out). A slow client is held back by its
//! socket: the next read happens only once the events before it were taken.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};

use crate::poll::{Follow, parse};
use crate::rest::{Failure, Rest, client};

/// What a reconnecting `EventSource` is told to wait before it does.
const RETRY: Duration = Duration::from_secs(3);
/// How often an idle stream sends a comment (proxies close silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /sse?topic=T[&topic=U]|filter=F[&after=CURSOR]`, or `Last-Event-ID` for `after`.
pub async fn sse(
    State(Rest {
        engine,
        stopped,
        hubs,
    }): State<Rest>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let client = client(&engine, &headers, query.as_deref())?;
    let mut poll = parse(query.as_deref())?;
    if let Some(id) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        poll.after = Some(id.to_string());
    }
    let hello = Event::default().retry(RETRY).comment("manifold");
    let events = stream::unfold(
        Some(Follow::new(client, poll, stopped, Some(hubs))),
        |state| async move {
            let mut follow = state?;
            let batch = match follow.next().await {
                Ok(b) => b,
                Err(Failure(_, error, message)) => {
                    let e = Event::default()
                        .event("error")
                        .data(serde_json::json!({"error": error, "message": message}).to_string());
                    return Some((vec![e], None));
                }
            };
            let mut out = Vec::with_capacity(batch.messages.len() + 1);
            if batch.reset {
                out.push(
                    Event::default()
                        .event("reset")
                        .data(serde_json::json!({"reset": true}).to_string()),
                );
            }
            for m in &batch.messages {
                out.push(Event::default().data(&*m.json).id(&*m.cursor));
            }
            // The listener stops: the events read go out, then the stream ends.
            let go_on = !follow.stopped();
            Some((out, go_on.then_some(follow)))
        },
    );
    let events = stream::once(async move { vec![hello] })
        .chain(events)
        .flat_map(|batch| stream::iter(batch.into_iter().map(Ok::<_, Infallible>)));
    Ok(sse_response(events))
}

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
