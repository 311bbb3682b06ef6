//! refund-desk: refund Stripe payments from Slack while finance keeps control.
//!
//! A map of the crate:
//! - [`domain`]: money, ids, the `/refund` grammar, a request's state machine (no I/O);
//! - [`config`]: settings from the environment and the TOML file, secrets wrapped;
//! - [`storage`]: the storage port and its engines (sled, PostgreSQL), the durable job queue;
//! - [`slack`]: inbound routes and signature checks, Block Kit views, the Web API client;
//! - [`api`]: the HTTP API for support tools (`/api/v1`), with bearer tokens;
//! - [`callback`]: status changes of API-made requests, posted signed to the client;
//! - [`stripe`]: the API client, webhook verification and parsing;
//! - [`email`]: SMTP and the customer's messages;
//! - [`desk`]: the use cases (ask, decide, Stripe's news), the one layer combining the store,
//!   the clients and the domain for what people and Stripe do;
//! - [`worker`]: the job runner and one handler per effect;
//! - [`context`]: what every adapter, job and periodic task works with (`AppContext`);
//! - [`app`]: wiring, HTTP router, start-up and graceful shutdown;
//! - `demo` (the `demo` feature, on by default): the offline end-to-end demo, against the
//!   stand-ins of `tests/standins` (a crate of their own);
//! - [`manifest`]: the Slack app manifest;
//! - [`admin`]: operator commands on the database (jobs list, retry).

pub mod admin;
pub mod api;
pub mod app;
pub mod callback;
pub mod config;
pub mod context;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod desk;
pub mod domain;
pub mod email;
pub mod manifest;
pub mod slack;
pub mod storage;
pub mod stripe;
pub mod worker;
