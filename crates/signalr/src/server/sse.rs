//! The Server-Sent Events transport's outbound side: one long response whose events
//! each carry one whole record (text only). The client's messages arrive by POST.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::connection::{CloseRequest, Outbound};
use super::registry::LiveGuard;

/// Sent first so the response head and a byte reach the client at once (the
/// EventSource `open` event, after which clients send the handshake; ASP.NET does
/// the same for Firefox).
const PREAMBLE: &[u8] = b":\r\n";

/// The streaming response body's state; dropping it (the client went away) closes
/// the connection.
struct EventWriter {
    outbound: Outbound,
    preamble_sent: bool,
    _live: LiveGuard,
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.outbound
            .connection()
            .request_close(CloseRequest::peer_gone("the event stream closed"));
    }
}

pub(crate) fn response(outbound: Outbound, live: LiveGuard) -> Response {
    let writer = EventWriter { outbound, preamble_sent: false, _live: live };
    let events = futures_util::stream::unfold(writer, |mut writer| async move {
        if !writer.preamble_sent {
            writer.preamble_sent = true;
            return Some((Ok::<Bytes, Infallible>(Bytes::from_static(PREAMBLE)), writer));
        }
        let record = writer.outbound.next().await?;
        Some((Ok(event(&record)), writer))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache,no-store"),
            (header::PRAGMA, "no-cache"),
            (header::CONTENT_ENCODING, "identity"),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

/// One event: `data: <line>` per line of the record, then a blank line.
fn event(record: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(record.len() + 10);
    let record = record.strip_suffix(b"\n").unwrap_or(record);
    for line in record.split(|b| *b == b'\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_records_as_events() {
        assert_eq!(&event(b"{\"type\":6}\x1e")[..], b"data: {\"type\":6}\x1e\r\n\r\n");
        assert_eq!(&event(b"a\nb")[..], b"data: a\r\ndata: b\r\n\r\n");
    }
}
