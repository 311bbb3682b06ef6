//! Slack over Socket Mode: the desk dials out to Slack (`apps.connections.open` with the
//! app-level token) and Slack's traffic comes over that WebSocket, so no public address is
//! needed. slack-morphism's listener acknowledges each envelope after its callback returns;
//! the callbacks call the same handlers as the HTTP routes, which answer only once what they
//! wrote is on disk, so an acknowledgement means the same here as over HTTP.

use super::inbound::{handle_command, handle_event_callback, handle_interaction};
use super::payloads::{Interaction, SlashCommand};
use crate::app::AppContext;
use secrecy::{ExposeSecret, SecretString};
use slack_morphism::prelude::*;
use std::sync::Arc;

pub type SocketListener = SlackClientSocketModeListener<SlackClientHyperHttpsConnector>;

/// Opens the Socket Mode connections for `app_token` and starts listening.
pub async fn start(ctx: Arc<AppContext>, app_token: &SecretString) -> anyhow::Result<SocketListener> {
    let client = ctx.slack.client();
    let env = Arc::new(
        SlackClientEventsListenerEnvironment::new(client).with_error_handler(on_error).with_user_state(ctx.clone()),
    );
    let callbacks = SlackSocketModeListenerCallbacks::new()
        .with_command_events(on_command)
        .with_interaction_events(on_interaction)
        .with_push_events(on_push);
    let config = SlackClientSocketModeConfig::new().with_initial_backoff_in_seconds(1);
    let listener = SlackClientSocketModeListener::new(&config, env, callbacks);
    let token = SlackApiToken::new(SlackApiTokenValue(app_token.expose_secret().to_string()));
    listener.listen_for(&token).await.map_err(|e| anyhow::anyhow!("Socket Mode could not connect: {e}"))?;
    listener.start().await;
    tracing::info!("listening to Slack over Socket Mode");
    Ok(listener)
}

async fn context(
    states: &SlackClientEventsUserState,
) -> Result<Arc<AppContext>, Box<dyn std::error::Error + Send + Sync>> {
    states
        .read()
        .await
        .get_user_state::<Arc<AppContext>>()
        .cloned()
        .ok_or_else(|| "no desk in the listener's state".into())
}

/// Our payload models read Slack's JSON, the same JSON slack-morphism's typed events write.
fn as_model<T: serde::Serialize, M: serde::de::DeserializeOwned>(
    event: &T,
) -> Result<M, Box<dyn std::error::Error + Send + Sync>> {
    Ok(serde_json::from_value(serde_json::to_value(event)?)?)
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let ctx = context(&states).await?;
    let command: SlashCommand = as_model(&event)?;
    let content = match handle_command(&ctx, command).await {
        Some(text) => SlackMessageContent::new().with_text(text),
        // The form opens instead of a message.
        None => SlackMessageContent::new(),
    };
    Ok(SlackCommandEventResponse::new(content).with_response_type(SlackMessageResponseType::Ephemeral))
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<SlackInteractionResponse> {
    let ctx = context(&states).await?;
    let interaction: Interaction = as_model(&event)?;
    let response = handle_interaction(&ctx, interaction).await;
    // The HTTP answer's body is the view-submission response (errors, update), or empty.
    let body = axum::body::to_bytes(response.into_body(), 1024 * 1024).await?;
    if body.is_empty() {
        return Ok(SlackInteractionResponse::Empty);
    }
    let answer: serde_json::Value = serde_json::from_slice(&body)?;
    if answer.get("response_action").is_none() {
        return Ok(SlackInteractionResponse::Empty);
    }
    Ok(SlackInteractionResponse::ViewSubmission(serde_json::from_value(answer)?))
}

async fn on_push(
    event: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let ctx = context(&states).await?;
    let mut value = serde_json::to_value(&event)?;
    value["type"] = "event_callback".into();
    match handle_event_callback(&ctx, &value).await {
        Ok(()) | Err(None) => Ok(()),
        // Not recorded: no acknowledgement, so Slack sends it again.
        Err(Some(e)) => Err(Box::new(e)),
    }
}

/// A callback that failed: acknowledged (2xx) when retrying cannot help, not acknowledged
/// (so Slack sends the envelope again) when the desk could not record it.
fn on_error(
    error: Box<dyn std::error::Error + Send + Sync>,
    _client: Arc<SlackHyperClient>,
    _states: SlackClientEventsUserState,
) -> axum::http::StatusCode {
    if error.downcast_ref::<crate::storage::StoreError>().is_some() {
        tracing::error!(error = %error, "a Socket Mode envelope could not be recorded; Slack will send it again");
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        // slack-morphism's protocol errors quote the envelope, whose payload holds a
        // response_url and Slack's verification token: log only what went wrong.
        let message = error.to_string();
        let what = message.split(" Body:").next().unwrap_or_default();
        tracing::warn!(error = %what, "a Socket Mode envelope could not be handled; acknowledged");
        axum::http::StatusCode::OK
    }
}
