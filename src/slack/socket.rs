//! Slack over Socket Mode: the desk dials out to Slack (`apps.connections.open` with the
//! app-level token) and Slack's traffic comes over that WebSocket, so no public address is
//! needed. slack-morphism's listener acknowledges each envelope after its callback returns;
//! the callbacks call the same handlers as the HTTP routes, which answer only once what they
//! wrote is on disk, so an acknowledgement means the same here as over HTTP.

use super::inbound::{handle_command, handle_event_callback, handle_interaction};
use crate::context::AppContext;
use secrecy::{ExposeSecret, SecretString};
use slack_morphism::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The Socket Mode side of a running desk: the listener, and the count of envelopes being
/// handled, so a stop can let them finish (and acknowledge) before the sockets close.
pub struct SocketMode {
    listener: SlackClientSocketModeListener<SlackClientHyperHttpsConnector>,
    gate: Arc<Gate>,
}

/// What the callbacks share, kept in the listener's user state. The desk is held weakly: the
/// listener's tasks may outlive a stop (a half-open socket, a reconnect under way), and must
/// not keep the store open.
struct Gate {
    ctx: std::sync::Weak<AppContext>,
    in_flight: AtomicUsize,
    stopping: AtomicBool,
}

/// An envelope refused because the desk is stopping: not acknowledged, so Slack sends an event
/// again to the next connection (commands and clicks Slack does not resend: the person tries
/// again).
#[derive(Debug, thiserror::Error)]
#[error("the desk is stopping")]
struct Stopping;

/// Acknowledge with nothing in it (the form opened instead of a message), as an empty HTTP 200.
#[derive(Debug, thiserror::Error)]
#[error("acknowledged without a message")]
struct BareAck;

/// Counts an envelope being handled, for as long as it lives.
struct InFlight(Arc<Gate>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SocketMode {
    /// Stops taking envelopes, lets those being handled finish and be acknowledged (up to
    /// `grace`), then closes the sockets.
    pub async fn stop(self, grace: std::time::Duration) {
        self.gate.stopping.store(true, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + grace;
        while self.gate.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.listener.shutdown().await;
    }
}

/// Opens the Socket Mode connections for `app_token` and starts listening.
pub async fn start(ctx: Arc<AppContext>, app_token: &SecretString) -> anyhow::Result<SocketMode> {
    let client = ctx.slack.client();
    let gate =
        Arc::new(Gate { ctx: Arc::downgrade(&ctx), in_flight: AtomicUsize::new(0), stopping: AtomicBool::new(false) });
    let env = Arc::new(
        SlackClientEventsListenerEnvironment::new(client).with_error_handler(on_error).with_user_state(gate.clone()),
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
    Ok(SocketMode { listener, gate })
}

type CallbackError = Box<dyn std::error::Error + Send + Sync>;

/// The desk, and a count of this envelope as being handled; an error once the desk stops.
async fn enter(states: &SlackClientEventsUserState) -> Result<(Arc<AppContext>, InFlight), CallbackError> {
    let gate = states.read().await.get_user_state::<Arc<Gate>>().cloned().ok_or("no desk in the listener's state")?;
    gate.in_flight.fetch_add(1, Ordering::SeqCst);
    let guard = InFlight(gate.clone());
    if gate.stopping.load(Ordering::SeqCst) {
        return Err(Box::new(Stopping));
    }
    let ctx = gate.ctx.upgrade().ok_or(Stopping)?;
    Ok((ctx, guard))
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<SlackCommandEventResponse> {
    let (ctx, _in_flight) = enter(&states).await?;
    match handle_command(&ctx, event).await {
        Some(answer) => Ok(answer),
        // The form opens instead of a message: a bare acknowledgement, as an empty HTTP 200.
        None => Err(Box::new(BareAck)),
    }
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<SlackInteractionResponse> {
    let (ctx, _in_flight) = enter(&states).await?;
    Ok(handle_interaction(&ctx, event).await)
}

async fn on_push(
    event: SlackPushEventCallback,
    _client: Arc<SlackHyperClient>,
    states: SlackClientEventsUserState,
) -> UserCallbackResult<()> {
    let (ctx, _in_flight) = enter(&states).await?;
    // Not recorded: an error, so no acknowledgement and Slack sends it again.
    Ok(handle_event_callback(&ctx, &event).await?)
}

/// A callback that failed. Not acknowledged (so Slack sends an event again, to another
/// connection) when the desk could not record it or is stopping; acknowledged otherwise, since
/// trying again cannot help.
fn on_error(
    error: CallbackError,
    _client: Arc<SlackHyperClient>,
    _states: SlackClientEventsUserState,
) -> axum::http::StatusCode {
    if error.is::<BareAck>() {
        axum::http::StatusCode::OK
    } else if error.is::<Stopping>() {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    } else if error.is::<crate::storage::StoreError>() {
        tracing::error!(error = %error, "a Socket Mode envelope could not be recorded; not acknowledged");
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
