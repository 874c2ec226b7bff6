//! The web console as HTTP serves it: the page and its assets, their
//! security headers, and `console.enabled = false`. (What the page does is
//! tested in headless Chromium: client-js/test/browser/console.test.ts.)

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// GET `path`: status, lower-cased response head, body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[ferry_test]
async fn the_console_and_its_assets_are_served_under_a_strict_policy() {
    let gw = spawn_gateway().await;
    let (status, head, body) = get(gw.addr, "/console").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains("<script src=\"/console/app.js\""), "{body}");
    for asset in ["/console/app.js", "/console/app.css", "/console/icon.svg"] {
        assert!(body.contains(asset), "the page links {asset}");
    }
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy: "))
        .unwrap_or_else(|| panic!("no CSP in {head}"))
        .to_owned();
    for directive in
        ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");

    let (status, head, js) = get(gw.addr, "/console/app.js").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("content-security-policy: "), "{head}");
    assert!(js.contains("'ferry.v1'"), "the script speaks protocol v1");
    let (status, head, _) = get(gw.addr, "/console/app.css").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/css"), "{head}");
    assert_eq!(get(gw.addr, "/console/nope.js").await.0, 404);
}

#[ferry_test]
async fn a_disabled_console_is_not_served() {
    let gw = spawn_gateway_with(|c| c.console.enabled = false).await;
    for path in ["/console", "/console/app.js", "/console/app.css"] {
        assert_eq!(get(gw.addr, path).await.0, 404, "{path}");
    }
    assert_eq!(gw.get("/healthz").await.0, 200, "the rest is served");
}
