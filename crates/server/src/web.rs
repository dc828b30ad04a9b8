//! The web chat page at `/`: the files of `web/` in the repository, compiled
//! into the binary (nothing to install or serve beside it), and
//! `/web-config.json`, which tells the page what this server expects (the
//! identity it asks for, the limits it shows).

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

/// What the page needs to know about the server.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebConfig {
    /// `header` (the page asks for a user name) or `jwt` (for a token).
    pub auth: &'static str,
    /// The claim a token's user id is read from, in `jwt` mode.
    pub user_claim: String,
    pub max_text_chars: usize,
    pub max_members: usize,
}

/// One embedded file: its path on the server, its content type, its bytes.
const FILES: [(&str, &str, &[u8]); 4] = [
    ("/", "text/html; charset=utf-8", include_bytes!("../../../web/index.html")),
    ("/app.js", "text/javascript; charset=utf-8", include_bytes!("../../../web/app.js")),
    ("/hub.js", "text/javascript; charset=utf-8", include_bytes!("../../../web/hub.js")),
    ("/style.css", "text/css; charset=utf-8", include_bytes!("../../../web/style.css")),
];

/// The page's routes.
pub fn router(config: WebConfig) -> Router {
    let mut router = Router::new();
    for (path, content_type, body) in FILES {
        router = router.route(
            path,
            get(move || async move {
                // A new server version brings new files: always revalidate.
                ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")], body)
            }),
        );
    }
    let json = serde_json::to_string(&config).unwrap_or_else(|_| "{}".into());
    router.route(
        "/web-config.json",
        get(move || {
            let json = json.clone();
            async move {
                ([(CONTENT_TYPE, "application/json"), (CACHE_CONTROL, "no-cache")], json)
                    .into_response()
            }
        }),
    )
}
