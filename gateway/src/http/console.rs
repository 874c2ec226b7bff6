//! The web console: `GET /console`, a page embedded in the binary (HTML,
//! JavaScript and CSS from `console/`, no CDN, no request to any other
//! origin) that speaks protocol v1 over this gateway's `/ws` with the token
//! typed into it, and reads `/metrics`.
//!
//! It can do nothing its token could not do from any other client, so it
//! is served by default; `console.enabled = false` removes the routes (404).
//!
//! Every response carries a strict Content-Security-Policy: scripts, styles,
//! images and connections from this origin only (`connect-src 'self'`
//! covers `ws:`/`wss:` to the same host), no inline script or style, no
//! framing, no form posts, no `<base>`; plus `nosniff` and `no-referrer`.

use std::sync::Arc;

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::node::Node;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const ICON_SVG: &str = include_str!("console/icon.svg");

/// The page's policy: nothing but this origin, and no inline code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const CROSS_ORIGIN_OPENER_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-opener-policy");
const CROSS_ORIGIN_RESOURCE_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-resource-policy");

/// The console's routes, merged into the router when enabled.
pub(super) fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/console/icon.svg", get(|| async { asset("image/svg+xml", ICON_SVG) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, content_type),
            (CONTENT_SECURITY_POLICY, CSP),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
            (X_FRAME_OPTIONS, "DENY"),
            (CROSS_ORIGIN_OPENER_POLICY, "same-origin"),
            (CROSS_ORIGIN_RESOURCE_POLICY, "same-origin"),
            // Embedded in the binary: a new binary may change them.
            (CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_has_no_inline_code() {
        for (name, text) in [("index.html", INDEX_HTML), ("app.js", APP_JS), ("app.css", APP_CSS)] {
            for bad in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(bad), "{name} mentions {bad:?}");
            }
        }
        // Scripts only by `src`, styles only by `<link>`; no handlers in markup.
        assert!(INDEX_HTML.contains(r#"<script src="/console/app.js" defer></script>"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains(" on"), "no inline event handlers");
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("eval("));
        assert!(CSP.contains("script-src 'self'") && !CSP.contains("unsafe"));
    }
}
