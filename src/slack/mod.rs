//! Slack: inbound routes and signature checks, Block Kit views, and the Web API client.

pub mod api;
pub mod inbound;
pub mod socket;
pub mod verify;
pub mod views;

pub use api::{SlackApi, SlackCallError};

/// The domain's checked user id, as Slack's id type where it crosses into the Web API.
impl From<&crate::domain::UserId> for slack_morphism::SlackUserId {
    fn from(user: &crate::domain::UserId) -> Self {
        slack_morphism::SlackUserId(user.as_str().to_string())
    }
}

/// Where to post to reach `user` directly: `chat.postMessage` to a user id lands in the app's
/// direct message with them.
pub fn direct_message(user: &crate::domain::UserId) -> slack_morphism::SlackChannelId {
    slack_morphism::SlackChannelId(user.as_str().to_string())
}
