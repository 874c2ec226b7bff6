//! TLS on the gateway's own port: `wss://` publish and subscribe with a
//! certificate made at test time, rotation while a client stays connected,
//! bad replacement files refused (the old certificate stays served), SIGHUP
//! reload, and a TLS handshake that never finishes is closed in time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::helpers::*;
use ferry_test_macros::ferry_test;

/// A test CA and the certificate/key files a gateway is pointed at.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

/// One leaf certificate for `localhost` and 127.0.0.1.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "Ferry test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        Self { dir, issuer: Issuer::new(params, key), ca }
    }

    /// A new leaf with common name `cn`, signed by the CA.
    pub fn leaf(&self, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Writes the leaf's certificate and key where the gateway reads them.
    pub fn install(&self, leaf: &Leaf) {
        std::fs::write(self.key_file(), &leaf.key_pem).unwrap();
        std::fs::write(self.cert_file(), &leaf.cert_pem).unwrap();
    }

    /// A client configuration that trusts only the test CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gateway serving TLS with the PKI's current files.
pub async fn tls_gateway(pki: &Pki, tweak: impl FnOnce(&mut ferry_gateway::Config)) -> TestGateway {
    spawn_gateway_with(|c| {
        c.tls.cert_file = Some(pki.cert_file());
        c.tls.key_file = Some(pki.key_file());
        tweak(c);
    })
    .await
}

/// The leaf certificate a fresh TLS handshake with `addr` is served.
pub async fn served_certificate(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> CertificateDer<'static> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned()
}

/// Waits until new handshakes are served `want`.
async fn wait_served(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, want: &Leaf) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if served_certificate(addr, config.clone()).await == want.der {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` over HTTPS: (status, body).
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = TlsConnector::from(config).connect(name, tcp).await.expect("TLS handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `ferry_tls_reloads_total{result="..."}` as the gateway reports it.
async fn reloads(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, result: &str) -> u64 {
    let (status, body) = https_get(addr, config.clone(), "/metrics").await;
    assert_eq!(status, 200);
    let series = format!("ferry_tls_reloads_total{{result=\"{result}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits until the gateway has refused one more reload than `before`.
async fn wait_rejected(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, before: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while reloads(addr, config, "rejected").await <= before {
        assert!(tokio::time::Instant::now() < deadline, "the bad files were never read");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

type Wss = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A small protocol v1 client over `wss://` that also reports the
/// certificate its handshake was served.
pub struct WssClient {
    ws: Wss,
    pub certificate: CertificateDer<'static>,
    kept: VecDeque<Value>,
    next_id: u64,
}

impl WssClient {
    pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Self {
        let mut request = format!("wss://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(ferry_protocol::SUBPROTOCOL),
        );
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            true,
            Some(Connector::Rustls(config)),
        );
        let (ws, _) = tokio::time::timeout(WAIT, connect).await.expect("wss in time").expect("wss");
        let certificate = match ws.get_ref() {
            MaybeTlsStream::Rustls(tls) => {
                tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone().into_owned()
            }
            _ => panic!("a wss:// connection without TLS"),
        };
        let mut client = Self { ws, certificate, kept: VecDeque::new(), next_id: 0 };
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    async fn next(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("frame in time")
                .expect("socket open")
                .expect("frame");
            if let Message::Text(text) = frame {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }

    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        frame["id"] = json!(id);
        self.ws.send(Message::text(frame.to_string())).await.expect("send");
        loop {
            let frame = self.next().await;
            if frame["id"] == id {
                return frame;
            }
            self.kept.push_back(frame);
        }
    }

    pub async fn next_message(&mut self) -> Value {
        if let Some(pos) = self.kept.iter().position(|f| f["type"] == "message") {
            return self.kept.remove(pos).unwrap();
        }
        loop {
            let frame = self.next().await;
            if frame["type"] == "message" {
                return frame;
            }
            self.kept.push_back(frame);
        }
    }

    pub async fn subscribed(&mut self, topic: &str) {
        let reply = self.request(json!({"type": "subscribe", "topic": topic})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }

    pub async fn acked(&mut self, topic: &str, value: Value) {
        let reply = self.request(json!({"type": "publish", "topic": topic, "value": value})).await;
        assert_eq!(reply["type"], "ack", "{reply}");
    }
}

/// Overall bound of every test here.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

#[ferry_test]
async fn wss_clients_publish_and_subscribe_and_plain_http_is_not_served() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new();
        let leaf = pki.leaf("ferry-a");
        pki.install(&leaf);
        let gw = tls_gateway(&pki, |_| {}).await;
        let config = pki.client_config();
        let topic = unique_topic("wss");

        let mut subscriber = WssClient::connect(gw.addr, config.clone()).await;
        assert_eq!(subscriber.certificate, leaf.der, "served the configured certificate");
        subscriber.subscribed(&topic).await;
        let mut publisher = WssClient::connect(gw.addr, config.clone()).await;
        publisher.acked(&topic, json!({"over": "wss"})).await;
        let message = subscriber.next_message().await;
        assert_eq!(message["topic"], topic.as_str());
        assert_eq!(message["value"], json!({"over": "wss"}));

        // HTTPS serves the ops endpoints too.
        assert_eq!(https_get(gw.addr, config.clone(), "/healthz").await.0, 200);
        // The TLS port does not answer plain HTTP or ws://.
        let mut plain = TcpStream::connect(gw.addr).await.unwrap();
        plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, plain.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "plain HTTP is closed, not left hanging");
        assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP is not served");
        let ws = tokio_tungstenite::connect_async(gw.ws_url()).await;
        assert!(ws.is_err(), "ws:// is not served on the TLS port");
        // A client that does not trust the CA is refused by its own check.
        let other = Pki::new().client_config();
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let name = ServerName::IpAddress(gw.addr.ip().into());
        assert!(TlsConnector::from(other).connect(name, tcp).await.is_err());
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn certificate_rotates_while_a_client_stays_connected_and_bad_files_are_refused() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new();
        let (a, b, c) = (pki.leaf("ferry-a"), pki.leaf("ferry-b"), pki.leaf("ferry-c"));
        pki.install(&a);
        let gw = tls_gateway(&pki, |_| {}).await;
        let config = pki.client_config();
        let topic = unique_topic("rotate");

        let mut old = WssClient::connect(gw.addr, config.clone()).await;
        assert_eq!(old.certificate, a.der);
        old.subscribed(&topic).await;

        // Rotate: new handshakes get B; the connected client keeps going.
        pki.install(&b);
        wait_served(gw.addr, &config, &b).await;
        let mut new = WssClient::connect(gw.addr, config.clone()).await;
        assert_eq!(new.certificate, b.der, "a new client sees the new certificate");
        assert_ne!(new.certificate, old.certificate);
        new.acked(&topic, json!("after rotation")).await;
        assert_eq!(old.next_message().await["value"], "after rotation");
        old.acked(&topic, json!("from the old client")).await;
        assert_eq!(old.next_message().await["value"], "from the old client");
        new.subscribed(&topic).await;
        old.acked(&topic, json!("again")).await;
        assert_eq!(new.next_message().await["value"], "again");

        // A file that is not a certificate: refused, B stays.
        let rejected = reloads(gw.addr, &config, "rejected").await;
        std::fs::write(pki.cert_file(), "this is not a certificate\n").unwrap();
        wait_rejected(gw.addr, &config, rejected).await;
        assert_eq!(served_certificate(gw.addr, config.clone()).await, b.der);

        // A certificate whose key is not the one in the key file: refused, B stays.
        let rejected = reloads(gw.addr, &config, "rejected").await;
        std::fs::write(pki.cert_file(), &c.cert_pem).unwrap();
        wait_rejected(gw.addr, &config, rejected).await;
        assert_eq!(served_certificate(gw.addr, config.clone()).await, b.der);

        // Its key arrives: C is served; both clients still work.
        std::fs::write(pki.key_file(), &c.key_pem).unwrap();
        wait_served(gw.addr, &config, &c).await;
        old.acked(&topic, json!("after the third certificate")).await;
        assert_eq!(new.next_message().await["value"], "after the third certificate");
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn sighup_reloads_the_certificate() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new();
        let (a, b) = (pki.leaf("ferry-a"), pki.leaf("ferry-b"));
        // Same file sizes for both pairs, and the old modification times
        // put back below, so that only the signal can tell the change.
        let width = |x: &str, y: &str| x.len().max(y.len()) + 1;
        let (cw, kw) = (width(&a.cert_pem, &b.cert_pem), width(&a.key_pem, &b.key_pem));
        let pad = |pem: &str, w: usize| format!("{pem}{}", "\n".repeat(w - pem.len()));
        let write = |leaf: &Leaf| {
            std::fs::write(pki.key_file(), pad(&leaf.key_pem, kw)).unwrap();
            std::fs::write(pki.cert_file(), pad(&leaf.cert_pem, cw)).unwrap();
        };
        write(&a);
        let gw = tls_gateway(&pki, |_| {}).await;
        let config = pki.client_config();
        assert_eq!(served_certificate(gw.addr, config.clone()).await, a.der);

        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        let (cert_time, key_time) = (mtime(&pki.cert_file()), mtime(&pki.key_file()));
        write(&b);
        let touch =
            |p: &Path, t| std::fs::File::options().write(true).open(p).unwrap().set_modified(t);
        touch(&pki.cert_file(), cert_time).unwrap();
        touch(&pki.key_file(), key_time).unwrap();
        // The file watch (1 s) sees nothing that changed...
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(served_certificate(gw.addr, config.clone()).await, a.der);
        // ...the signal reloads.
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_served(gw.addr, &config, &b).await;
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn a_tls_handshake_that_never_finishes_is_closed_after_the_header_timeout() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let pki = Pki::new();
        pki.install(&pki.leaf("ferry-a"));
        let gw = tls_gateway(&pki, |c| c.server.header_read_timeout_ms = 500).await;
        let started = std::time::Instant::now();
        // Connected, never a ClientHello.
        let mut silent = TcpStream::connect(gw.addr).await.unwrap();
        // Handshake done, headers never finished: the same deadline covers both.
        let tcp = TcpStream::connect(gw.addr).await.unwrap();
        let name = ServerName::IpAddress(gw.addr.ip().into());
        let mut slow = TlsConnector::from(pki.client_config()).connect(name, tcp).await.unwrap();
        slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(WAIT, silent.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the silent connection was closed");
        let closed = tokio::time::timeout(WAIT, slow.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "the slow request was closed");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "not before the timeout: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "soon after the timeout: {elapsed:?}");
        // An honest client still gets in.
        WssClient::connect(gw.addr, pki.client_config()).await;
    })
    .await
    .expect("test finished in time");
}

#[ferry_test]
async fn a_certificate_that_does_not_load_stops_the_gateway_at_start() {
    let pki = Pki::new();
    let (a, b) = (pki.leaf("ferry-a"), pki.leaf("ferry-b"));
    // The key of another certificate, then a certificate file with no certificate.
    std::fs::write(pki.cert_file(), &a.cert_pem).unwrap();
    std::fs::write(pki.key_file(), &b.key_pem).unwrap();
    let mismatch = start_failure(&pki);
    assert!(mismatch.contains("does not belong to the first certificate"), "{mismatch}");
    std::fs::write(pki.cert_file(), &a.key_pem).unwrap();
    let no_cert = start_failure(&pki);
    assert!(no_cert.contains("no CERTIFICATE block"), "{no_cert}");
}

/// Runs `ferry` on the PKI's files; asserts it exits with an error and
/// returns what it printed.
fn start_failure(pki: &Pki) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["--listen", "127.0.0.1:0"])
        .env("FERRY_TLS_CERT_FILE", pki.cert_file())
        .env("FERRY_TLS_KEY_FILE", pki.key_file())
        .env_remove("FERRY_TEST_KAFKA")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway started with a bad certificate");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}: {stderr}");
    stderr
}
