//! Slack: inbound routes and signature checks, Block Kit views, and the Web API client.

pub mod api;
pub mod inbound;
pub mod payloads;
pub mod socket;
pub mod verify;
pub mod views;

pub use api::{SlackApi, SlackCallError};
