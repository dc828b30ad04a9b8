//! Plain HTTP requests for tests (health, readiness, metrics, negotiate),
//! made with reqwest. Tests that must send bytes no HTTP client would (a
//! split or malformed head, a short body) keep writing to a socket.

use std::time::Duration;

/// How long a request may take before the test fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A whole response.
pub struct HttpResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if it is there and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// `GET url`.
pub async fn get(url: &str) -> HttpResponse {
    request("GET", url, &[], Vec::new()).await
}

/// One request on a connection of its own (no pooling, so each request sees
/// the server as a new client would); panics when it cannot be made or
/// takes longer than 10 s.
pub async fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpResponse {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("an HTTP client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let mut builder = client.request(method.clone(), url).body(body);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response =
        builder.send().await.unwrap_or_else(|e| panic!("{method} {url}: no response: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"))
        .to_vec();
    HttpResponse { status, headers, body }
}
