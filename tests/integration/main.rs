//! Ferry's integration suite: one test binary, real gateways on port 0, real
//! Kafka (each gateway's embedded Kafka by default, the broker named by
//! `FERRY_TEST_KAFKA` when set), random topic names. Everything is checked
//! on the wire, the way a client sees it, and against what an independent
//! rdkafka client reads from Kafka.

#![allow(unreachable_pub)] // items are shared between test modules

mod helpers;

mod admin;
mod auth;
mod console;
mod deflate;
mod delivery;
mod errors;
mod failover;
mod fanout;
mod filters;
mod groups;
mod hostile;
mod http_publish;
mod ledger;
mod listener;
mod nodes;
mod ops;
mod publish;
mod requests;
mod schema;
mod secure;
mod snapshot;
mod sse;
mod startup;
mod telemetry;
mod throttle;
mod tls;
