//! Opens one WebSocket to the hub: negotiate (v1) unless skipped, the upgrade
//! with the credential in the `Authorization` header, and the hub handshake,
//! over TLS for `https://` and `wss://`.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::header::{AUTHORIZATION, HeaderValue};
use next_chat_signalr::handshake::{self, HandshakeRequest, HandshakeResponse};
use next_chat_signalr::negotiate::{self, NegotiateResponse};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::error::ClientError;
use crate::options::{ClientOptions, Protocol};
use crate::wire;

pub(crate) type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected WebSocket past the handshake.
pub(crate) struct Transport {
    pub(crate) socket: WebSocket,
    /// Bytes that followed the handshake response in the same frame: the
    /// start of the hub messages.
    pub(crate) leftover: Vec<u8>,
    /// Set when the server agreed to stateful reconnect: how to open another
    /// WebSocket to the same connection.
    pub(crate) resume: Option<Resume>,
}

/// What a new WebSocket to the same connection needs (stateful reconnect).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    /// The WebSocket URL with the connection token as `?id=`.
    url: Url,
    authorization: String,
    connect_timeout: std::time::Duration,
}

impl Resume {
    #[cfg(test)]
    pub(crate) fn for_tests() -> Resume {
        Resume {
            url: Url::parse("ws://127.0.0.1:1/next-chat?id=x").expect("a valid URL"),
            authorization: "Bearer test".into(),
            connect_timeout: std::time::Duration::from_secs(1),
        }
    }

    /// Opens another WebSocket to the same connection; no handshake (the
    /// connection already had one).
    pub(crate) async fn reopen(&self) -> Result<WebSocket, ClientError> {
        let connect = async {
            let mut request = self
                .url
                .as_str()
                .into_client_request()
                .map_err(|e| ClientError::InvalidOptions(format!("{}: {e}", self.url)))?;
            request.headers_mut().insert(AUTHORIZATION, header_value(&self.authorization)?);
            let (socket, _response) =
                tokio_tungstenite::connect_async_with_config(request, None, true)
                    .await
                    .map_err(upgrade_error)?;
            Ok(socket)
        };
        tokio::time::timeout(self.connect_timeout, connect).await.map_err(|_| {
            ClientError::Connection(format!("no new WebSocket within {:?}", self.connect_timeout))
        })?
    }
}

/// A negotiate redirect (`url` + `accessToken`) may point elsewhere; this many
/// hops are followed, as the JavaScript client does.
const MAX_REDIRECTS: usize = 10;

/// The largest negotiate response read; real ones are a few hundred bytes.
const MAX_NEGOTIATE_BYTES: usize = 64 * 1024;

pub(crate) async fn open(options: &ClientOptions) -> Result<Transport, ClientError> {
    tokio::time::timeout(options.connect_timeout, open_within(options)).await.map_err(|_| {
        ClientError::Connection(format!(
            "no connection to {} within {:?}",
            options.url, options.connect_timeout
        ))
    })?
}

async fn open_within(options: &ClientOptions) -> Result<Transport, ClientError> {
    let credential = match &options.token_file {
        Some(path) => {
            tokio::fs::read_to_string(path).await.map(|token| token.trim().to_owned()).map_err(
                |e| ClientError::InvalidOptions(format!("token file {}: {e}", path.display())),
            )?
        }
        None => options.user.clone(),
    };
    if credential.is_empty() {
        return Err(ClientError::InvalidOptions("the user id must not be empty".into()));
    }
    let mut endpoint = hub_url(&options.url)?;
    let tls = crate::tls::client_config(options.ca_file.as_deref())?;
    // The server removes one leading `Bearer `, so this is right also for a user
    // whose name itself starts with `Bearer `.
    let mut authorization = format!("Bearer {credential}");
    let mut connection_token = None;
    let mut stateful = false;
    if !options.skip_negotiation {
        let mut redirects = 0;
        loop {
            let negotiation =
                negotiate(&endpoint, &authorization, &tls, options.stateful_reconnect).await?;
            if let Some(url) = negotiation.url {
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(ClientError::Protocol("too many negotiate redirects".into()));
                }
                endpoint = hub_url(&url)?;
                if let Some(token) = negotiation.access_token {
                    authorization = format!("Bearer {token}");
                }
                continue;
            }
            check_websockets_offered(&negotiation, options.protocol)?;
            connection_token = negotiation.transport_id().map(str::to_string);
            stateful = options.stateful_reconnect
                && negotiation.use_stateful_reconnect == Some(true)
                && connection_token.is_some();
            break;
        }
    }

    let mut ws_url = endpoint.clone();
    let scheme = if endpoint.scheme() == "https" { "wss" } else { "ws" };
    ws_url
        .set_scheme(scheme)
        .map_err(|()| ClientError::InvalidOptions(format!("cannot use {endpoint} as ws://")))?;
    if let Some(token) = &connection_token {
        ws_url.query_pairs_mut().append_pair("id", token);
    }
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::InvalidOptions(format!("{ws_url}: {e}")))?;
    request.headers_mut().insert(AUTHORIZATION, header_value(&authorization)?);
    let connector = Connector::Rustls(tls);
    let (mut socket, _response) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector))
            .await
            .map_err(upgrade_error)?;

    // Stateful reconnect starts with hub protocol version 2.
    let version = if stateful { 2 } else { wire::HUB_PROTOCOL_VERSION };
    let request = HandshakeRequest::new(wire::wire_protocol(options.protocol), version);
    let record = Utf8Bytes::try_from(request.encode())
        .map_err(|_| ClientError::Protocol("the handshake request is not UTF-8".into()))?;
    socket.send(WsMessage::Text(record)).await.map_err(connection_error)?;

    let mut received = Vec::new();
    loop {
        let frame = match socket.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(connection_error(e)),
            None => {
                return Err(ClientError::Handshake("the server closed the connection".into()));
            }
        };
        match frame {
            WsMessage::Text(text) => received.extend_from_slice(text.as_bytes()),
            WsMessage::Binary(bytes) => received.extend_from_slice(&bytes),
            WsMessage::Close(frame) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                return Err(ClientError::Handshake(format!(
                    "the server closed the connection {reason}"
                )));
            }
            _ => continue,
        }
        if let Some(end) = handshake::find_record_end(&received) {
            handshake_response(&received[..end])?;
            let leftover = received.split_off(end + 1);
            let resume = stateful.then(|| Resume {
                url: ws_url.clone(),
                authorization: authorization.clone(),
                connect_timeout: options.connect_timeout,
            });
            return Ok(Transport { socket, leftover, resume });
        }
    }
}

/// `{}` accepts; `{"error": "..."}` refuses.
fn handshake_response(record: &[u8]) -> Result<(), ClientError> {
    let response = HandshakeResponse::parse(record)
        .map_err(|e| ClientError::Protocol(format!("handshake response: {e}")))?;
    match response.error {
        Some(error) => Err(ClientError::Handshake(error)),
        None => Ok(()),
    }
}

/// The hub URL as http(s), which negotiate uses and the WebSocket URL derives from.
fn hub_url(url: &str) -> Result<Url, ClientError> {
    let mut parsed = Url::parse(url)
        .map_err(|e| ClientError::InvalidOptions(format!("not a valid URL: {url} ({e})")))?;
    let scheme = match parsed.scheme() {
        "http" | "ws" => "http",
        "https" | "wss" => "https",
        other => {
            return Err(ClientError::InvalidOptions(format!(
                "unsupported URL scheme {other}: use http://, https://, ws:// or wss://"
            )));
        }
    };
    if parsed.host_str().is_none() {
        return Err(ClientError::InvalidOptions(format!("the URL {url} names no host")));
    }
    parsed
        .set_scheme(scheme)
        .map_err(|()| ClientError::InvalidOptions(format!("cannot use {url} as {scheme}://")))?;
    Ok(parsed)
}

fn check_websockets_offered(
    negotiation: &NegotiateResponse,
    protocol: Protocol,
) -> Result<(), ClientError> {
    let format = match protocol {
        Protocol::Json => "Text",
        Protocol::MessagePack => "Binary",
    };
    let transports = negotiation.available_transports.as_deref().unwrap_or_default();
    let offered = transports.iter().any(|t| {
        t.transport == negotiate::Transport::WebSockets.name()
            && t.transfer_formats.iter().any(|f| f == format)
    });
    if offered {
        Ok(())
    } else {
        Err(ClientError::Connection(format!(
            "the server does not offer WebSockets with {format} frames"
        )))
    }
}

/// `POST {hub}/negotiate?negotiateVersion=1[&useStatefulReconnect=true]`.
async fn negotiate(
    endpoint: &Url,
    authorization: &str,
    tls: &Arc<rustls::ClientConfig>,
    stateful_reconnect: bool,
) -> Result<NegotiateResponse, ClientError> {
    let mut url = endpoint.clone();
    let path = format!("{}/negotiate", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.query_pairs_mut().append_pair("negotiateVersion", "1");
    if stateful_reconnect {
        url.query_pairs_mut().append_pair("useStatefulReconnect", "true");
    }
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(rustls::ClientConfig::clone(tls))
        // A negotiate redirect is a 200 with a `url`, followed above.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ClientError::InvalidOptions(format!("HTTP client: {e}")))?;
    let failed = |e: reqwest::Error| ClientError::Connection(format!("negotiate: {}", chain(&e)));
    let mut response = http
        .post(url.as_str())
        .header(AUTHORIZATION, header_value(authorization)?)
        .send()
        .await
        .map_err(failed)?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_NEGOTIATE_BYTES {
            return Err(ClientError::Protocol(format!(
                "the negotiate response is larger than {MAX_NEGOTIATE_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        return Err(ClientError::Http {
            status: status.as_u16(),
            message: http_message(status.canonical_reason(), &body),
        });
    }
    let negotiation = NegotiateResponse::parse(&body)
        .map_err(|e| ClientError::Protocol(format!("negotiate response: {e}")))?;
    if let Some(error) = negotiation.error {
        return Err(ClientError::Connection(error));
    }
    Ok(negotiation)
}

/// An error and its causes, `: `-separated: reqwest's own text names none of
/// them (say, the certificate that was not trusted).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn header_value(value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|_| {
        ClientError::InvalidOptions(format!("{value:?} cannot be sent in an HTTP header"))
    })
}

/// The server's own words if it sent any, else the status's name.
fn http_message(reason: Option<&str>, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { reason.unwrap_or("error").to_string() } else { text.to_string() }
}

fn upgrade_error(error: tungstenite::Error) -> ClientError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response.body().as_deref().unwrap_or_default();
            ClientError::Http {
                status: status.as_u16(),
                message: http_message(status.canonical_reason(), body),
            }
        }
        tungstenite::Error::Url(e) => ClientError::InvalidOptions(e.to_string()),
        other => connection_error(other),
    }
}

fn connection_error(error: tungstenite::Error) -> ClientError {
    ClientError::Connection(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_accept_http_and_ws_schemes() {
        assert_eq!(
            hub_url("ws://h:5000/next-chat").map(|u| u.to_string()),
            Ok("http://h:5000/next-chat".into())
        );
        assert_eq!(
            hub_url("https://h/next-chat").map(|u| u.to_string()),
            Ok("https://h/next-chat".into())
        );
        assert!(matches!(hub_url("ftp://h/x"), Err(ClientError::InvalidOptions(_))));
        assert!(matches!(hub_url("not a url"), Err(ClientError::InvalidOptions(_))));
    }

    #[test]
    fn handshake_response_error_is_refusal() {
        assert_eq!(handshake_response(b"{}"), Ok(()));
        assert_eq!(
            handshake_response(br#"{"error":"no such protocol"}"#),
            Err(ClientError::Handshake("no such protocol".into()))
        );
        assert!(matches!(handshake_response(b"{"), Err(ClientError::Protocol(_))));
    }
}
