//! The Slack Web API client: slack-morphism's hyper client with a deadline on every call, and
//! errors sorted into "try again" and "will never work".

use secrecy::{ExposeSecret, SecretString};
use slack_morphism::errors::SlackClientError;
use slack_morphism::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Slack's client has no timeouts of its own.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackCallError {
    #[error("Slack rate limited the call (retry after {0:?})")]
    RateLimited(Option<Duration>),
    /// Slack answered `ok: false` with an error that will not go away by itself.
    #[error("Slack refused the call: {0}")]
    Refused(String),
    #[error("Slack is unavailable: {0}")]
    Unavailable(String),
}

impl SlackCallError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SlackCallError::Refused(_))
    }
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackCallError::RateLimited(d) => *d,
            _ => None,
        }
    }
}

/// Slack error codes that mean "try again later".
const TRANSIENT_CODES: [&str; 6] =
    ["ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout", "team_added_to_org"];

impl From<SlackClientError> for SlackCallError {
    fn from(e: SlackClientError) -> Self {
        match e {
            SlackClientError::RateLimitError(r) => SlackCallError::RateLimited(r.retry_after),
            SlackClientError::ApiError(a) if TRANSIENT_CODES.contains(&a.code.as_str()) => {
                SlackCallError::Unavailable(a.code)
            }
            SlackClientError::ApiError(a) => SlackCallError::Refused(a.code),
            // Payloads in these errors can hold message text; keep only the kind.
            SlackClientError::ProtocolError(_) => SlackCallError::Unavailable("unreadable answer from Slack".into()),
            SlackClientError::HttpError(h) => SlackCallError::Unavailable(format!("HTTP {}", h.status_code)),
            other => SlackCallError::Unavailable(other.to_string()),
        }
    }
}

/// The bot's Web API client.
#[derive(Clone)]
pub struct SlackApi {
    client: Arc<SlackHyperClient>,
    /// Holds the bot token; slack-morphism's `Debug` hides it.
    token: SlackApiToken,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi").finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client for `api_url` (e.g. `https://slack.com/api`; plain `http://` works for stand-ins).
    pub fn new(api_url: &str, bot_token: &SecretString) -> std::io::Result<SlackApi> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let connector = SlackClientHyperConnector::from(https).with_slack_api_url(api_url);
        Ok(SlackApi {
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(SlackApiTokenValue(bot_token.expose_secret().to_string())),
        })
    }

    /// slack-morphism's client, for the Socket Mode listener.
    pub fn client(&self) -> Arc<SlackHyperClient> {
        self.client.clone()
    }

    async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T, SlackCallError>
    where
        F: AsyncFnOnce(SlackClientSession<'_, SlackClientHyperHttpsConnector>) -> Result<T, SlackClientError>,
    {
        let session = self.client.open_session(&self.token);
        match tokio::time::timeout(CALL_TIMEOUT, f(session)).await {
            Ok(result) => result.map_err(SlackCallError::from),
            Err(_) => Err(SlackCallError::Unavailable(format!("{what} timed out"))),
        }
    }

    /// Posts a message (in a thread when `thread_ts` is given); returns its `ts`.
    #[tracing::instrument(skip(self, content))]
    pub async fn post_message(
        &self,
        channel: &SlackChannelId,
        content: SlackMessageContent,
        thread_ts: Option<&SlackTs>,
    ) -> Result<SlackTs, SlackCallError> {
        let mut req = SlackApiChatPostMessageRequest::new(channel.clone(), content);
        if let Some(ts) = thread_ts {
            req = req.with_thread_ts(ts.clone());
        }
        let res = self.call("chat.postMessage", async |s| s.chat_post_message(&req).await).await?;
        Ok(res.ts)
    }

    /// Posts a direct message to `user`; returns the conversation and the message's `ts`, which
    /// editing it later needs.
    #[tracing::instrument(skip(self, content))]
    pub async fn post_direct_message(
        &self,
        user: &crate::domain::UserId,
        content: SlackMessageContent,
    ) -> Result<(SlackChannelId, SlackTs), SlackCallError> {
        let req = SlackApiChatPostMessageRequest::new(super::direct_message(user), content);
        let res = self.call("chat.postMessage", async |s| s.chat_post_message(&req).await).await?;
        Ok((res.channel, res.ts))
    }

    /// A link to a message.
    #[tracing::instrument(skip(self))]
    pub async fn permalink(&self, channel: &SlackChannelId, ts: &SlackTs) -> Result<String, SlackCallError> {
        let req = SlackApiChatGetPermalinkRequest::new(channel.clone(), ts.clone());
        let res = self.call("chat.getPermalink", async |s| s.chat_get_permalink(&req).await).await?;
        Ok(res.permalink.to_string())
    }

    #[tracing::instrument(skip(self, content))]
    pub async fn update_message(
        &self,
        channel: &SlackChannelId,
        ts: &SlackTs,
        content: SlackMessageContent,
    ) -> Result<(), SlackCallError> {
        let req = SlackApiChatUpdateRequest::new(channel.clone(), content, ts.clone());
        self.call("chat.update", async |s| s.chat_update(&req).await).await.map(|_| ())
    }

    /// A message only `user` sees, in `channel`.
    #[tracing::instrument(skip(self, text))]
    pub async fn post_ephemeral(
        &self,
        channel: &SlackChannelId,
        user: &SlackUserId,
        text: String,
    ) -> Result<(), SlackCallError> {
        let req =
            SlackApiChatPostEphemeralRequest::new(channel.clone(), user.clone(), super::views::text_message(text));
        self.call("chat.postEphemeral", async |s| s.chat_post_ephemeral(&req).await).await.map(|_| ())
    }

    #[tracing::instrument(skip(self, view))]
    pub async fn open_view(&self, trigger_id: &SlackTriggerId, view: SlackView) -> Result<(), SlackCallError> {
        let req = SlackApiViewsOpenRequest::new(trigger_id.clone(), view);
        self.call("views.open", async |s| s.views_open(&req).await).await.map(|_| ())
    }

    /// The members of a user group.
    #[tracing::instrument(skip(self))]
    pub async fn usergroup_members(&self, group: &SlackUserGroupId) -> Result<Vec<SlackUserId>, SlackCallError> {
        let req = SlackApiUserGroupsUsersListRequest::new(group.clone());
        let res = self.call("usergroups.users.list", async |s| s.usergroups_users_list(&req).await).await?;
        Ok(res.users)
    }

    /// The workspace member with `email` (`users.lookupByEmail`, which needs the
    /// `users:read.email` scope); `None` when there is none, or only a deactivated account or a
    /// bot has it.
    #[tracing::instrument(skip_all)]
    pub async fn user_by_email(&self, email: &str) -> Result<Option<SlackUserId>, SlackCallError> {
        let req = SlackApiUsersLookupByEmailRequest::new(EmailAddress(email.to_string()));
        match self.call("users.lookupByEmail", async |s| s.users_lookup_by_email(&req).await).await {
            Ok(res) if res.user.deleted == Some(true) || res.user.flags.is_bot == Some(true) => Ok(None),
            Ok(res) => Ok(Some(res.user.id)),
            Err(SlackCallError::Refused(code)) if code == "users_not_found" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Publishes `user`'s App Home.
    #[tracing::instrument(skip(self, view))]
    pub async fn publish_home(&self, user: &SlackUserId, view: SlackView) -> Result<(), SlackCallError> {
        let req = SlackApiViewsPublishRequest::new(user.clone(), view);
        self.call("views.publish", async |s| s.views_publish(&req).await).await.map(|_| ())
    }

    /// Replaces the private answer a slash command got, through the command's `response_url`
    /// (usable 5 times within 30 minutes of the command).
    #[tracing::instrument(skip_all)]
    pub async fn replace_answer(&self, response_url: &str, text: String) -> Result<(), SlackCallError> {
        let url: url::Url = response_url.parse().map_err(|_| SlackCallError::Refused("invalid response_url".into()))?;
        // Replacing an ephemeral answer keeps it ephemeral: only the requester sees it.
        let req = SlackApiPostWebhookMessageRequest::new(super::views::text_message(text)).with_replace_original(true);
        match tokio::time::timeout(CALL_TIMEOUT, self.client.respond_to_event(&SlackResponseUrl(url), &req)).await {
            Ok(result) => result.map(|_| ()).map_err(SlackCallError::from),
            Err(_) => Err(SlackCallError::Unavailable("response_url timed out".into())),
        }
    }

    /// Which scopes the bot token has, as `auth.test` reports them (`x-oauth-scopes`), and
    /// whether the bot is a member of `channel` (`conversations.info`). For `check`: plain
    /// HTTP, since the header is not in slack-morphism's answer.
    pub async fn setup_of(
        api_url: &str,
        bot_token: &SecretString,
        channel: &str,
    ) -> Result<(Vec<String>, Result<bool, String>), String> {
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build().map_err(|e| e.to_string())?;
        let auth = http
            .post(format!("{api_url}/auth.test"))
            .bearer_auth(bot_token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("Slack could not be reached: {e}"))?;
        let scopes = auth
            .headers()
            .get("x-oauth-scopes")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let info: serde_json::Value = http
            .get(format!(
                "{api_url}/conversations.info?{}",
                url::form_urlencoded::Serializer::new(String::new()).append_pair("channel", channel).finish()
            ))
            .bearer_auth(bot_token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("Slack could not be reached: {e}"))?
            .json()
            .await
            .map_err(|e| format!("Slack's answer could not be read: {e}"))?;
        let member = match info["ok"].as_bool() {
            Some(true) => Ok(info["channel"]["is_member"].as_bool().unwrap_or(false)),
            _ => Err(info["error"].as_str().unwrap_or("no answer").to_string()),
        };
        Ok((scopes, member))
    }

    /// Who the token belongs to (`auth.test`): team and bot user.
    pub async fn whoami(&self) -> Result<String, SlackCallError> {
        let res = self.call("auth.test", async |s| s.auth_test().await).await?;
        Ok(format!("team {} as user {}", res.team_id, res.user_id))
    }
}
