//! Wires the gateway together: Kafka clients, hub, fan-out, HTTP server, and
//! the drain on shutdown.
//!
//! [`App::build`] does everything that can fail (start the embedded Kafka,
//! create clients, bind the listener); [`App::run`] serves until the
//! shutdown token is cancelled and then drains in order: stop accepting,
//! sessions answer their in-flight publishes (the producer is flushed
//! meanwhile), sockets close with 1001, then the fan-out and Kafka clients
//! stop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acl::{CurrentPolicy, Policy};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::control::Control;
use crate::delivery::Routes;
use crate::hub::Hub;
use crate::kafka::catchup;
use crate::kafka::client_config::ClientSettings;
use crate::kafka::context::KafkaContext;
use crate::kafka::embedded::{EmbeddedError, EmbeddedKafka};
use crate::kafka::fanout::Fanout;
use crate::kafka::groups::Groups;
use crate::kafka::health::Health;
use crate::kafka::producer::{KafkaProducer, Publisher, Reports};
use crate::kafka::topics::{Creator, Topics};
use crate::node::registry::Registry;
use crate::node::revocations::Revocations;
use crate::node::{self, Node};
use crate::recent::Budget;
use crate::schema::Schemas;
use crate::tables::Tables;
use crate::{http, metrics};

/// Reloads the ACL on SIGHUP and when the configuration file changes.
async fn watch_policy(state: Arc<Node>, path: PathBuf, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen = modified(&path);
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup => state.reload_policy(&path),
            _ = tick.tick() => {
                let now = modified(&path);
                if now != seen {
                    seen = now;
                    state.reload_policy(&path);
                }
            }
        }
    }
}

/// What only the layers above the configuration can check before the node
/// starts, reported with the configuration's own errors (see
/// [`crate::config::load_for`]): the TLS files can be read and hold a
/// certificate and its key, and the Kafka client takes every setting.
pub fn serving_checks(config: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some((cert, key)) = config.tls.files() {
        errors.extend(http::tls::check_files(cert, key));
    }
    let kafka = &config.kafka;
    if crate::config::kafka_security::resolve(&kafka.security, kafka.embedded()).is_ok() {
        errors.extend(crate::kafka::client_config::check(kafka));
    }
    errors
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("embedded Kafka: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error("creating a Kafka client: {0}")]
    Kafka(#[from] KafkaError),
    #[error("invalid configuration: {}", .0.join("; "))]
    Config(Vec<String>),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] http::tls::TlsError),
}

/// A built gateway, ready to [`run`](App::run).
pub struct App {
    state: Arc<Node>,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<Arc<http::tls::Tls>>,
    producer: KafkaProducer,
    bootstrap: String,
    embedded: Option<Arc<EmbeddedKafka>>,
    admin: Option<Admin>,
    /// Cancelled once the node has drained: its Kafka tasks stop.
    background: CancellationToken,
}

/// The admin API's listener and the node's side of the control topic.
struct Admin {
    listener: TcpListener,
    local_addr: SocketAddr,
    control: Arc<Control>,
    token: crate::auth::Secret,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("local_addr", &self.local_addr)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(config: Config) -> Result<Self, BuildError> {
        let auth = Authenticator::from_config(&config.auth).map_err(BuildError::Config)?;
        let policy = node::effective_policy(
            &config,
            Policy::compile(&config.acl).map_err(BuildError::Config)?,
        );
        let schemas = Schemas::compile(&config.schemas).map_err(BuildError::Config)?;
        let embedded = match config.kafka.embedded() {
            true => {
                let kafka = EmbeddedKafka::start(1)?;
                let bootstrap = kafka.bootstrap_servers();
                // The port changes on every start: the line says what to
                // paste.
                tracing::info!(
                    "embedded kafka bootstrap={bootstrap} (any Kafka client can join, e.g. \
                     kcat -b {bootstrap} -L)"
                );
                Some(Arc::new(kafka))
            }
            false => None,
        };
        let bootstrap = match &embedded {
            Some(kafka) => kafka.bootstrap_servers().to_owned(),
            None => config.kafka.brokers.clone().unwrap_or_default(),
        };
        let settings =
            ClientSettings::new(&config.kafka, bootstrap.clone()).map_err(BuildError::Config)?;
        let health = Arc::new(Health::default());
        // Clients built with this context name the cause when the cluster
        // refuses the gateway, and mark `health` not ready at once.
        let context = KafkaContext::new(health.clone());
        let producer: KafkaProducer =
            settings.producer().create_with_context(Reports::new(context.clone()))?;
        let consumer: StreamConsumer<KafkaContext> =
            settings.consumer().create_with_context(context.clone())?;
        let creator = match (config.kafka.auto_create(), &embedded) {
            (false, _) => None,
            (true, Some(kafka)) => Some(Creator::Embedded(kafka.clone())),
            (true, None) => {
                Some(Creator::Admin(settings.admin().create_with_context(context.clone())?))
            }
        };
        let timeout = config.kafka.metadata_timeout();
        let topics = Arc::new(Topics::new(
            producer.clone(),
            health.clone(),
            creator,
            config.kafka.topic_partitions,
            config.kafka.topic_replication,
            timeout,
        ));
        if embedded.is_none() {
            tracing::info!(bootstrap, "waiting for Kafka (up to {timeout:?})");
        }
        if !health.probe(&producer, timeout).await {
            tracing::warn!(
                bootstrap,
                "Kafka does not answer yet; serving anyway (/readyz is 503 until it does)"
            );
        }
        let limits = &config.limits;
        let budget = Budget::new(limits.recent_bytes, Duration::from_millis(limits.recent_age_ms));
        let catchup = catchup::Settings {
            readers: limits.catchup_readers,
            max_followers: limits.max_catching_up,
            timeout,
        };
        let fanout = Arc::new(Fanout::new(
            consumer,
            Arc::new(Hub::new(budget)),
            topics.clone(),
            timeout,
            config.kafka.partition_refresh(),
            settings.clone(),
            context.clone(),
            catchup,
            limits.rewind_records,
        ));

        let tls = match config.tls.files() {
            Some((cert, key)) => Some(Arc::new(http::tls::Tls::new(cert, key)?)),
            None => None,
        };
        let listener = listen(config.listen)
            .map_err(|source| BuildError::Listen { addr: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| BuildError::Listen { addr: config.listen, source })?;

        // Stops the node's Kafka tasks once it has drained (`run`).
        let background = CancellationToken::new();
        let admin_listener = match config.admin.enabled {
            false => None,
            true => {
                let addr = config.admin.listen;
                let listener =
                    listen(addr).map_err(|source| BuildError::Listen { addr, source })?;
                let local =
                    listener.local_addr().map_err(|source| BuildError::Listen { addr, source })?;
                Some((listener, local))
            }
        };
        let routes = Arc::new(Routes {
            topics: topics.clone(),
            fanout,
            groups: Groups::new(
                settings.clone(),
                context.clone(),
                config.kafka.group_prefix.clone(),
                timeout,
            ),
            tables: Tables::new(
                &config.tables,
                settings.clone(),
                context.clone(),
                topics.clone(),
                background.clone(),
            ),
        });
        let state = Arc::new(Node {
            node_id: config.node_id(),
            publisher: Publisher::new(producer.clone(), health.clone()),
            topics,
            routes,
            health,
            auth: Arc::new(auth),
            policy: Arc::new(CurrentPolicy::new(policy)),
            schemas: Arc::new(schemas),
            subjects: Arc::default(),
            batches: Arc::default(),
            metrics: metrics::prometheus(),
            shutdown: CancellationToken::new(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            sessions: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            registry: Arc::new(Registry::new(config.node_id(), config.admin.enabled)),
            revocations: Arc::new(Revocations::new(config.admin.enabled)),
            draining: AtomicBool::new(false),
            config,
        });
        let admin = match admin_listener {
            None => None,
            Some((listener, local_addr)) => {
                let token = state.config.admin.bearer().map_err(|e| BuildError::Config(vec![e]))?;
                let token = token.ok_or_else(|| {
                    BuildError::Config(vec!["admin.enabled needs a token".to_owned()])
                })?;
                let control = Control::new(state.clone(), producer.clone(), settings, context);
                Some(Admin { listener, local_addr, control, token })
            }
        };
        Ok(Self {
            state,
            listener,
            local_addr,
            tls,
            producer,
            bootstrap,
            embedded,
            admin,
            background,
        })
    }

    /// The address the server is bound to (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Kafka bootstrap servers in use (the embedded one's, if embedded).
    pub fn kafka_bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The admin API's address, when it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr)
    }

    /// The embedded Kafka, for fault injection in tests.
    pub fn embedded_kafka(&self) -> Option<Arc<EmbeddedKafka>> {
        self.embedded.clone()
    }

    /// The node every door shares (for tests that drive a door directly).
    pub fn node(&self) -> Arc<Node> {
        self.state.clone()
    }

    /// Cancel this token to shut the gateway down gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then drains.
    pub async fn run(self) {
        let state = self.state.clone();
        let background = self.background.clone();
        tokio::spawn(state.routes.fanout.clone().run(background.clone()));
        tokio::spawn(state.health.clone().run(
            self.producer.clone(),
            state.config.kafka.metadata_timeout(),
            background.clone(),
        ));
        if let Some(jwks) = state.auth.jwks() {
            tokio::spawn(jwks.run(background.clone()));
        }
        if let Some(path) = state.config.source_file.clone() {
            tokio::spawn(watch_policy(state.clone(), path, background.clone()));
        }
        if let Some(admin) = self.admin {
            tokio::spawn(admin.control.clone().run(background.clone()));
            let router = http::admin::router(admin.control, admin.token);
            tracing::info!("admin API on http://{}", admin.local_addr);
            tokio::spawn(http::admin::serve(admin.listener, router, background.clone()));
        }
        let addr = self.local_addr;
        let (scheme, ws) = if self.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
        tracing::info!(node = %state.node_id, "listening on {scheme}://{addr} (WebSocket: {ws}://{addr}/ws)");
        if let Some(tls) = &self.tls {
            tokio::spawn(tls.clone().watch(background.clone()));
        }
        let settings = http::server::Settings {
            header_read_timeout: state.config.server.header_read_timeout(),
            max_pending_handshakes: state.config.limits.max_pending_handshakes,
            max_pending_handshakes_per_address: state
                .config
                .limits
                .max_pending_handshakes_per_address,
        };
        let server = tokio::spawn(http::server::serve(
            self.listener,
            self.tls.clone(),
            http::router(state.clone()),
            settings,
            state.shutdown.clone(),
        ));

        state.shutdown.cancelled().await;
        tracing::info!("shutting down: answering in-flight publishes, closing sockets");
        let grace = state.config.shutdown_grace();
        let producer = self.producer.clone();
        let flush = tokio::task::spawn_blocking(move || producer.flush(grace));
        state.sessions.close();
        if tokio::time::timeout(grace + Duration::from_secs(2), state.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not finish within the shutdown grace");
        }
        match flush.await {
            Ok(Ok(())) => tracing::info!("producer flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "producer flush incomplete"),
            Err(e) => tracing::warn!(error = %e, "producer flush task failed"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        background.cancel();
        tracing::info!("stopped");
    }
}

/// Connections the kernel queues for `accept` on the listening socket. A
/// node taking over another's clients sees thousands connect at once; the
/// usual 128 would overflow, and each refused client waits out a SYN retry
/// (1 s, then 3 s, ...). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the public listener, with [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
