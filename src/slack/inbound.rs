//! Slack's requests to us, over either transport: the HTTP routes `/slack/commands`,
//! `/slack/interactions` and `/slack/events`, and Socket Mode's envelopes (`socket.rs`).
//!
//! One set of handlers serves both. They take slack-morphism's typed events
//! (`SlackCommandEvent`, `SlackInteractionEvent`, `SlackPushEventCallback`) and return its typed
//! answers (`SlackCommandEventResponse`, `SlackInteractionResponse`); the HTTP routes verify the
//! signature over the raw body (the [`SlackSigned`] extractor), parse into the same types and
//! call the same handlers. A handler makes at most one storage transition, which is on disk
//! before it answers. Nothing here waits on
//! Stripe, SMTP or the Slack Web API: those are jobs, or (for private "you can't do that" notes
//! and opening the deny form, which must use the click's 3-second trigger) spawned tasks.

use super::verify::{SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature};
use super::views::{
    self, APPROVE_ACTION, APPROVE_AMOUNT_BLOCK, APPROVE_CALLBACK, APPROVE_NOTE_BLOCK, DENY_ACTION, DENY_CALLBACK,
    DENY_REASON_ACTION, DENY_REASON_BLOCK, INPUT_ACTION, REMIND_ACTION,
};
use crate::context::AppContext;
use crate::desk::decide::{Asking, Decided};
use crate::domain::command::{parse_command, usage};
use crate::domain::{AmountInput, Approval, Command, DecisionError, NewRequest, RequestId, UserId, capitalised};
use crate::storage::StoreError;
use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use slack_morphism::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

/// A request body whose Slack signature checked out.
pub struct SlackSigned(pub Bytes);

impl FromRequest<Arc<AppContext>> for SlackSigned {
    type Rejection = Response;

    async fn from_request(req: Request, ctx: &Arc<AppContext>) -> Result<Self, Response> {
        let headers = req.headers().clone();
        // Over the limit, this answers 413 before any check.
        let body = Bytes::from_request(req, ctx).await.map_err(IntoResponse::into_response)?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        // Over Socket Mode there is no signing secret, and nothing may come over HTTP.
        let Some(secret) = &ctx.settings.slack.signing_secret else {
            return Err((StatusCode::NOT_FOUND, "Slack's traffic comes over Socket Mode").into_response());
        };
        // Real time, not the desk's clock: Slack signs with the real one.
        match verify_signature(
            secret,
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            &body,
            chrono::Utc::now().timestamp(),
        ) {
            Ok(()) => Ok(SlackSigned(body)),
            Err(e) => {
                tracing::warn!(reason = %e, "refused a Slack request");
                Err((StatusCode::UNAUTHORIZED, "invalid Slack signature").into_response())
            }
        }
    }
}

/// A private answer to a command.
fn ephemeral(text: String) -> SlackCommandEventResponse {
    SlackCommandEventResponse::new(views::text_message(text)).with_response_type(SlackMessageResponseType::Ephemeral)
}

/// `POST /slack/commands`: the signed form, parsed into slack-morphism's typed command.
pub async fn http_command(State(ctx): State<Arc<AppContext>>, SlackSigned(body): SlackSigned) -> Response {
    match serde_urlencoded::from_bytes::<SlackCommandEvent>(&body) {
        Ok(cmd) => match handle_command(&ctx, cmd).await {
            Some(answer) => Json(answer).into_response(),
            // The form opens instead of a message.
            None => StatusCode::OK.into_response(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "unreadable slash command");
            (StatusCode::BAD_REQUEST, "unreadable slash command").into_response()
        }
    }
}

/// Answers one `/refund`, privately; `None` when the form opens instead (a bare acknowledgement).
#[tracing::instrument(skip_all, fields(slack_user = %cmd.user_id))]
pub async fn handle_command(ctx: &Arc<AppContext>, cmd: SlackCommandEvent) -> Option<SlackCommandEventResponse> {
    let (user, command) = match ready_command(ctx, &cmd) {
        Ok(ready) => ready,
        Err(answer) => return Some(ephemeral(answer)),
    };
    Some(ephemeral(match command {
        Command::Help => usage(),
        Command::OpenForm => {
            if cmd.trigger_id.0.is_empty() {
                return Some(ephemeral(format!(
                    "The request form could not be opened here; type the request instead.\n\n{}",
                    usage()
                )));
            }
            // views.open must use the trigger within 3 seconds, so it goes now, beside the answer.
            let ctx2 = ctx.clone();
            let (trigger, channel) = (cmd.trigger_id.clone(), cmd.channel_id.clone());
            tokio::spawn(async move {
                if let Err(e) = ctx2.slack.open_view(&trigger, views::request_modal(&channel.0)).await {
                    tracing::warn!(error = %e, "could not open the request form");
                    ctx2.tell_privately(
                        Some(channel),
                        user,
                        format!("The request form could not be opened ({e}). Type `/refund` again, or `/refund help`."),
                    );
                }
            });
            return None;
        }
        Command::List => list_text(ctx, &user).await,
        Command::Cancel(id) => {
            let now = ctx.now();
            match ctx.store.transition(id, now, |r| r.withdraw(&user, now).map(Some)).await {
                Ok(Ok(_)) => format!("{id} is withdrawn; nothing will be refunded for it."),
                Ok(Err(refusal)) => refusal.to_string(),
                Err(StoreError::NotFound(_)) => format!("There is no request {id}."),
                Err(e) => {
                    tracing::error!(error = %e, "could not withdraw a request");
                    format!("{id} could not be withdrawn just now, so nothing changed. Try again in a minute.")
                }
            }
        }
        Command::Status(id) => status_text(ctx, id).await,
        Command::Delegate(delegation) => match crate::desk::delegate::handle(ctx, &user, delegation).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::error!(error = %e, "could not change a delegation");
                "The delegation could not be saved just now, so nothing changed. Try again in a minute.".to_string()
            }
        },
        Command::Refund(rc) => store_request(ctx, rc, user, &cmd).await,
    }))
}

/// The person's recent requests, one line each.
async fn list_text(ctx: &AppContext, user: &UserId) -> String {
    // Shown only once on disk: a power cut must not undo what the person was told.
    let read = match ctx.store.requests_of(user.as_str(), 10).await {
        Ok(list) => ctx.store.flush().await.map(|()| list),
        Err(e) => Err(e),
    };
    match read {
        Ok(list) if list.is_empty() => "You have no refund requests yet.".into(),
        Ok(list) => {
            let now = ctx.now();
            let lines: Vec<String> = list
                .iter()
                .map(|r| {
                    let amount = r.amount.map(|m| m.to_string()).unwrap_or_else(|| r.asked_text());
                    format!(
                        "• *{}* · {amount} on `{}` · {} · {} ago",
                        r.id,
                        r.target,
                        r.status,
                        views::waited(r.created_at, now)
                    )
                })
                .collect();
            format!("*Your recent refund requests*\n{}", lines.join("\n"))
        }
        Err(e) => {
            tracing::error!(error = %e, "could not list requests");
            "Your requests could not be read just now. Try again in a minute.".into()
        }
    }
}

/// Checks who is asking and parses the text; `Err` is the answer to give.
fn ready_command(ctx: &AppContext, cmd: &SlackCommandEvent) -> Result<(UserId, Command), String> {
    let Ok(user) = UserId::parse(&cmd.user_id.0) else {
        return Err("Slack did not say who you are, so nothing was done. Try again.".into());
    };
    crate::desk::ask::may_ask(ctx, &user)?;
    let command = parse_command(cmd.text.as_deref().unwrap_or_default())
        .map_err(|e| format!(":warning: {}\nNothing was stored.\n\n{}", capitalised(&e.to_string()), usage()))?;
    Ok((user, command))
}

/// `/refund status R-...`.
async fn status_text(ctx: &AppContext, id: RequestId) -> String {
    match ctx.store.get_request_durable(id).await {
        Ok(Some(r)) => {
            let amount = r.amount.map(|m| m.to_string()).unwrap_or_else(|| r.asked_text());
            format!("*{}*: {amount} on `{}`.\n{}", r.id, r.target, views::status_line(&r))
        }
        Ok(None) => format!("There is no request {id}."),
        Err(e) => {
            tracing::error!(error = %e, "status lookup failed");
            "The request could not be read just now. Try again in a minute.".into()
        }
    }
}

/// A `response_url` the desk will post to later: Slack's own, or one on the Slack API's host
/// (a stand-in's). The payload is signed, but the desk never posts where Slack would not.
fn trusted_response_url(ctx: &AppContext, url: &SlackResponseUrl) -> Option<String> {
    let parsed = &url.0;
    let slack_api = url::Url::parse(&ctx.settings.slack.api_url).ok()?;
    let slacks_own = parsed.scheme() == "https" && parsed.host_str() == Some("hooks.slack.com");
    let api_host = parsed.origin() == slack_api.origin();
    (slacks_own || api_host).then(|| parsed.to_string())
}

/// `/refund <charge> ...`: stores the request (durably) and says so.
async fn store_request(
    ctx: &AppContext,
    rc: crate::domain::RefundCommand,
    user: UserId,
    cmd: &SlackCommandEvent,
) -> String {
    let new = NewRequest {
        requester: user,
        origin_channel: cmd.channel_id.0.clone(),
        target: rc.target,
        amount: rc.amount,
        reason: rc.reason,
        note: rc.note,
        customer_email: None,
        response_url: trusted_response_url(ctx, &cmd.response_url),
        api: None,
    };
    match crate::desk::ask::ask(ctx, new).await {
        Ok(r) => {
            let mut text = format!(
                "Got it: *{}*, a refund of {} on `{}` ({}). I am checking the charge at Stripe; then it goes to finance for approval. You will hear the outcome in a direct message.",
                r.id,
                r.asked_text(),
                r.target,
                r.reason.label()
            );
            let earlier = crate::desk::ask::earlier_on_payment(ctx, &r, views::OTHERS_SHOWN).await;
            if let Some(notice) = views::others_notice(&earlier) {
                text.push('\n');
                text.push_str(&notice);
            }
            text
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store a request");
            ":x: Your request could not be saved, so nothing was stored. Try again in a minute.".into()
        }
    }
}

#[derive(serde::Deserialize)]
struct InteractionForm {
    payload: String,
}

/// `POST /slack/interactions`
pub async fn http_interaction(State(ctx): State<Arc<AppContext>>, SlackSigned(body): SlackSigned) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<InteractionForm>(&body) else {
        return (StatusCode::BAD_REQUEST, "no payload").into_response();
    };
    match serde_json::from_str::<SlackInteractionEvent>(&form.payload) {
        Ok(interaction) => handle_interaction(&ctx, interaction).await.into_response(),
        Err(e) => {
            // Answering 200 keeps Slack from showing the user an error for payloads we ignore.
            tracing::warn!(error = %e, "unreadable interaction payload");
            StatusCode::OK.into_response()
        }
    }
}

/// A click, a submitted form or a closed one. `Empty` is an empty 200 (over Socket Mode a bare
/// acknowledgement), which also closes a submitted form.
pub async fn handle_interaction(ctx: &Arc<AppContext>, interaction: SlackInteractionEvent) -> SlackInteractionResponse {
    match interaction {
        SlackInteractionEvent::BlockActions(click) => {
            let user = click.user.as_ref().map(|u| u.id.to_string()).unwrap_or_default();
            let span = tracing::info_span!("block_actions", slack_user = %user);
            async {
                for action in click.actions.iter().flatten() {
                    handle_action(ctx, &click, action).await;
                }
            }
            .instrument(span)
            .await;
            SlackInteractionResponse::Empty
        }
        SlackInteractionEvent::ViewSubmission(submitted) => {
            let span = tracing::info_span!("view_submission", slack_user = %submitted.user.id);
            let answer = handle_submission(ctx, &submitted).instrument(span).await;
            answer.map(SlackInteractionResponse::ViewSubmission).unwrap_or(SlackInteractionResponse::Empty)
        }
        // Closing a form (`view_closed`) changes nothing: only a submission decides.
        _ => SlackInteractionResponse::Empty,
    }
}

/// A submitted form: the deny form or the request form. `None` closes it.
async fn handle_submission(
    ctx: &Arc<AppContext>,
    submitted: &SlackInteractionViewSubmissionEvent,
) -> Option<SlackViewSubmissionResponse> {
    let SlackView::Modal(modal) = &submitted.view.view else { return None };
    let user = UserId::parse(&submitted.user.id.0).ok()?;
    let form = Form { modal, state: submitted.view.state_params.state.as_ref() };
    match modal.callback_id.as_ref().map(|c| c.0.as_str()) {
        Some(DENY_CALLBACK) => handle_deny_submission(ctx, user, &form).await,
        Some(APPROVE_CALLBACK) => handle_approve_submission(ctx, user, &form).await,
        Some(views::REQUEST_CALLBACK) => handle_request_submission(ctx, user, &form).await,
        _ => None,
    }
}

/// What a submitted modal carries: its metadata and what was typed or chosen in it.
struct Form<'a> {
    modal: &'a SlackModalView,
    state: Option<&'a SlackViewState>,
}

impl Form<'_> {
    /// The text typed into an input, or the option chosen in a select, by block and action id.
    fn input(&self, block_id: &str, action_id: &str) -> Option<String> {
        let value = self.state?.values.get(&block_id.into())?.get(&action_id.into())?;
        value.value.clone().or_else(|| value.selected_option.as_ref().map(|o| o.value.clone()))
    }

    fn private_metadata(&self) -> &str {
        self.modal.private_metadata.as_deref().unwrap_or_default()
    }
}

/// The channel a click came from: the card's, or none for a click in App Home (private notes
/// then go by direct message).
fn channel_of(click: &SlackInteractionBlockActionsEvent) -> Option<SlackChannelId> {
    let from_container = match &click.container {
        SlackInteractionActionContainer::Message(m) => m.channel_id.clone(),
        SlackInteractionActionContainer::MessageAttachment(m) => m.channel_id.clone(),
        SlackInteractionActionContainer::View(_) => None,
    };
    click.channel.as_ref().map(|c| c.id.clone()).or(from_container).filter(|c| !c.0.is_empty())
}

async fn handle_action(
    ctx: &Arc<AppContext>,
    click: &SlackInteractionBlockActionsEvent,
    action: &SlackInteractionActionInfo,
) {
    let action_id = action.action_id.0.as_str();
    if ![APPROVE_ACTION, DENY_ACTION, REMIND_ACTION].contains(&action_id) {
        return;
    }
    let channel = channel_of(click);
    let Some(Ok(user)) = click.user.as_ref().map(|u| UserId::parse(&u.id.0)) else {
        return;
    };
    let Some(id) = action.value.as_deref().and_then(|v| RequestId::parse(v).ok()) else {
        tracing::warn!(value = ?action.value, "button without a request id");
        return;
    };
    if action_id == REMIND_ACTION {
        match crate::desk::decide::nudge(ctx, id, &user).await {
            Ok(Decided::Done) => {
                ctx.tell_privately(channel, user, format!("Approvers are reminded about {id} in the card's thread."))
            }
            Ok(Decided::Refused(refusal)) => ctx.tell_privately(channel, user, refusal.to_string()),
            Err(e) => report_store_error(ctx, channel, user, id, e),
        }
        return;
    }
    // Check first, so nobody gets a form they cannot submit.
    let asking = if action_id == APPROVE_ACTION { Asking::Approve } else { Asking::Deny };
    let request = match crate::desk::decide::may_decide(ctx, id, &user, asking).await {
        Ok(Some(Ok(r))) => r,
        Ok(Some(Err(refusal))) => return ctx.tell_privately(channel, user, refusal.to_string()),
        Ok(None) => return ctx.tell_privately(channel, user, format!("There is no request {id}.")),
        Err(e) => return report_store_error(ctx, channel, user, id, e),
    };
    let form = match asking {
        Asking::Approve if !request.approval_needs_form() => {
            match crate::desk::decide::approve(ctx, id, &user, &Approval::default()).await {
                Ok(Decided::Done) => {}
                Ok(Decided::Refused(refusal)) => ctx.tell_privately(channel, user, refusal.to_string()),
                Err(e) => report_store_error(ctx, channel, user, id, e),
            }
            return;
        }
        Asking::Approve => ("approval", views::approve_modal(&request), "Approve"),
        Asking::Deny => ("deny", views::deny_modal(&request), "Deny"),
    };
    // Opened at once, while the click's trigger id is still valid.
    let trigger = click.trigger_id.clone();
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        let (what, view, button) = form;
        if let Err(e) = ctx2.slack.open_view(&trigger, view).await {
            tracing::warn!(error = %e, request_id = %id, form = what, "could not open a form");
            ctx2.tell_privately(
                channel,
                user,
                format!("The {what} form could not be opened ({e}). Click {button} again."),
            );
        }
    });
}

fn report_store_error(
    ctx: &Arc<AppContext>,
    channel: Option<SlackChannelId>,
    user: UserId,
    id: RequestId,
    e: StoreError,
) {
    match e {
        StoreError::NotFound(_) => ctx.tell_privately(channel, user, format!("There is no request {id}.")),
        e => {
            tracing::error!(error = %e, request_id = %id, "storage failed on a click");
            ctx.tell_privately(
                channel,
                user,
                format!("{id} could not be updated just now, so nothing changed. Try again in a minute."),
            );
        }
    }
}

/// The form stays open, with `errors` (block id → message) shown on their fields.
fn errors_response(errors: HashMap<String, String>) -> Option<SlackViewSubmissionResponse> {
    Some(SlackViewSubmissionResponse::Errors(SlackViewSubmissionErrorsResponse::new(errors)))
}

fn view_error(block: &str, message: String) -> Option<SlackViewSubmissionResponse> {
    errors_response(HashMap::from([(block.to_string(), message)]))
}

/// The answer to a decision form that lost its request id: on `block`, click `button` again.
fn lost_track(block: &str, button: &str) -> Option<SlackViewSubmissionResponse> {
    view_error(block, format!("This form lost track of its request; close it and click {button} again."))
}

async fn handle_deny_submission(
    ctx: &Arc<AppContext>,
    user: UserId,
    form: &Form<'_>,
) -> Option<SlackViewSubmissionResponse> {
    let Some(id) = views::modal_request(form.private_metadata()) else { return lost_track(DENY_REASON_BLOCK, "Deny") };
    let reason = form.input(DENY_REASON_BLOCK, DENY_REASON_ACTION).unwrap_or_default();
    match crate::desk::decide::deny(ctx, id, &user, &reason).await {
        // An empty 200 closes the form.
        Ok(Decided::Done) => None,
        Ok(Decided::Refused(DecisionError::EmptyReason)) => {
            view_error(DENY_REASON_BLOCK, "Write a reason the requester can act on.".into())
        }
        Ok(Decided::Refused(refusal)) => view_error(DENY_REASON_BLOCK, refusal.to_string()),
        Err(e) => {
            tracing::error!(error = %e, request_id = %id, "storage failed on a denial");
            view_error(DENY_REASON_BLOCK, "The denial could not be saved just now; try again.".into())
        }
    }
}

/// The approval form, submitted: the typed amount must be the request's (in its currency), and
/// a note given where the policy asks for one; each mistake goes back on its field.
async fn handle_approve_submission(
    ctx: &Arc<AppContext>,
    user: UserId,
    form: &Form<'_>,
) -> Option<SlackViewSubmissionResponse> {
    let Some(id) = views::modal_request(form.private_metadata()) else {
        return lost_track(APPROVE_NOTE_BLOCK, "Approve");
    };
    let request = match ctx.store.get_request(id).await {
        Ok(Some(r)) => r,
        Ok(None) => return view_error(APPROVE_NOTE_BLOCK, format!("There is no request {id}.")),
        Err(e) => {
            tracing::error!(error = %e, request_id = %id, "storage failed on an approval");
            return view_error(APPROVE_NOTE_BLOCK, "The approval could not be saved just now; try again.".into());
        }
    };
    let typed = form.input(APPROVE_AMOUNT_BLOCK, INPUT_ACTION);
    let typed_amount = match (typed.as_deref().map(str::trim).filter(|t| !t.is_empty()), request.amount) {
        (Some(text), Some(amount)) => match AmountInput::parse(text).and_then(|a| a.to_money(amount.currency())) {
            Ok(money) => Some(money),
            Err(e) => return view_error(APPROVE_AMOUNT_BLOCK, capitalised(&e.to_string())),
        },
        _ => None,
    };
    let given = Approval { note: form.input(APPROVE_NOTE_BLOCK, INPUT_ACTION), typed_amount };
    match crate::desk::decide::approve(ctx, id, &user, &given).await {
        Ok(Decided::Done) => None,
        Ok(Decided::Refused(refusal @ (DecisionError::AmountMismatch(_) | DecisionError::AmountNotConfirmed(_)))) => {
            view_error(APPROVE_AMOUNT_BLOCK, refusal.to_string())
        }
        Ok(Decided::Refused(refusal)) => view_error(APPROVE_NOTE_BLOCK, refusal.to_string()),
        Err(e) => {
            tracing::error!(error = %e, request_id = %id, "storage failed on an approval");
            view_error(APPROVE_NOTE_BLOCK, "The approval could not be saved just now; try again.".into())
        }
    }
}

/// How long the form waits for Stripe before accepting and checking afterwards.
const FORM_STRIPE_BUDGET: std::time::Duration = std::time::Duration::from_millis(1500);

/// The request form, submitted: format errors go back on their fields; Stripe is asked whether
/// the charge exists and has enough left, when it answers in time.
async fn handle_request_submission(
    ctx: &Arc<AppContext>,
    user: UserId,
    form: &Form<'_>,
) -> Option<SlackViewSubmissionResponse> {
    use crate::domain::{AmountAsked, AmountInput, Note, PaymentRef, RefundReason};
    use views::{AMOUNT_BLOCK, CHARGE_BLOCK, EMAIL_BLOCK, INPUT_ACTION, NOTE_BLOCK, REASON_BLOCK};
    if let Err(why) = crate::desk::ask::may_ask(ctx, &user) {
        return view_error(CHARGE_BLOCK, why);
    }
    let input = |block: &str| form.input(block, INPUT_ACTION).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let mut errors = HashMap::new();
    let mut error = |block: &str, message: String| {
        errors.insert(block.to_string(), message);
    };
    let target = match input(CHARGE_BLOCK).map(|t| PaymentRef::parse(&t)) {
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            error(CHARGE_BLOCK, capitalised(&e.to_string()));
            None
        }
        None => {
            error(CHARGE_BLOCK, "Give the charge (ch_...) or payment intent (pi_...) from Stripe.".into());
            None
        }
    };
    let amount = match input(AMOUNT_BLOCK) {
        None => Some(AmountAsked::Full),
        Some(t) if t.eq_ignore_ascii_case("full") => Some(AmountAsked::Full),
        Some(t) => match AmountInput::parse(&t) {
            Ok(a) => Some(AmountAsked::Exact(a)),
            Err(e) => {
                error(AMOUNT_BLOCK, capitalised(&e.to_string()));
                None
            }
        },
    };
    let reason = input(REASON_BLOCK).and_then(|r| RefundReason::parse(&r)).unwrap_or(RefundReason::RequestedByCustomer);
    let email = match input(EMAIL_BLOCK) {
        Some(e) if e.parse::<lettre::Address>().is_err() => {
            error(
                EMAIL_BLOCK,
                format!("`{e}` is not an email address; write it like jenny@example.com, or leave it empty."),
            );
            None
        }
        other => other,
    };
    let note = match Note::parse(&input(NOTE_BLOCK).unwrap_or_default()) {
        Ok(n) => n,
        Err(e) => {
            error(NOTE_BLOCK, capitalised(&e.to_string()));
            None
        }
    };
    let (Some(target), Some(amount)) = (target, amount) else {
        return errors_response(errors);
    };
    if !errors.is_empty() {
        return errors_response(errors);
    }
    let checked = tokio::time::timeout(FORM_STRIPE_BUDGET, crate::desk::ask::quick_check(ctx, &target, &amount));
    if let Ok(Err((input, why))) = checked.await {
        let block = match input {
            crate::desk::ask::Input::Payment => CHARGE_BLOCK,
            crate::desk::ask::Input::Amount => AMOUNT_BLOCK,
        };
        return view_error(block, capitalised(&why));
    }
    // The form carries the channel it was opened from; without one, answers go by direct message.
    let channel = match form.private_metadata() {
        "" => user.to_string(),
        channel => channel.to_string(),
    };
    let new = NewRequest {
        requester: user,
        origin_channel: channel,
        target,
        amount,
        reason,
        note,
        customer_email: email,
        response_url: None,
        api: None,
    };
    match crate::desk::ask::ask(ctx, new).await {
        Ok(request) => Some(SlackViewSubmissionResponse::Update(SlackViewSubmissionUpdateResponse::new(
            views::request_received(&request),
        ))),
        Err(e) => {
            tracing::error!(error = %e, "could not store a request");
            view_error(
                CHARGE_BLOCK,
                "Your request could not be saved, so nothing was stored. Try again in a minute.".into(),
            )
        }
    }
}

/// `POST /slack/events`
pub async fn http_events(State(ctx): State<Arc<AppContext>>, SlackSigned(body): SlackSigned) -> Response {
    let answer = |recorded: Result<(), StoreError>| match recorded {
        Ok(()) => StatusCode::OK.into_response(),
        // Not recorded: an error, so Slack sends it again.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match serde_json::from_slice::<SlackPushEvent>(&body) {
        Ok(SlackPushEvent::UrlVerification(v)) => Json(serde_json::json!({ "challenge": v.challenge })).into_response(),
        Ok(SlackPushEvent::EventCallback(callback)) => answer(handle_event_callback(&ctx, &callback).await),
        Ok(SlackPushEvent::AppRateLimited(_)) => {
            tracing::warn!("Slack says the app is rate limited for events");
            StatusCode::OK.into_response()
        }
        Err(e) => {
            // A signed event slack-morphism cannot read (a shape it does not model): nothing
            // to act on, but recorded by its id like any other, so a retry is known as one.
            let event_id = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .filter(|event| event["type"] == "event_callback")
                .and_then(|event| event["event_id"].as_str().filter(|id| !id.is_empty()).map(str::to_string));
            match event_id {
                Some(id) => {
                    tracing::warn!(error = %e, event_id = %id, "unreadable Slack event; recorded, not acted on");
                    answer(record_event(&ctx, &id).await.map(|_| ()))
                }
                None => {
                    tracing::warn!(error = %e, "unreadable Slack event");
                    (StatusCode::BAD_REQUEST, "unreadable event").into_response()
                }
            }
        }
    }
}

/// Records a Slack event id; `false` when it was recorded before (a retry: change nothing).
async fn record_event(ctx: &AppContext, event_id: &str) -> Result<bool, StoreError> {
    // Slack retries (X-Slack-Retry-Num, or an envelope's retry_attempt) carry the same event_id.
    ctx.store.remember_slack_event(event_id, ctx.now()).await.inspect_err(|e| {
        tracing::error!(error = %e, "could not record a Slack event");
    })
}

/// An Events API `event_callback` (over HTTP or Socket Mode): recorded once by `event_id`, so a
/// retry changes nothing. An error means it could not be recorded, so Slack must send it again.
pub async fn handle_event_callback(ctx: &Arc<AppContext>, callback: &SlackPushEventCallback) -> Result<(), StoreError> {
    if callback.event_id.0.is_empty() {
        tracing::warn!("a Slack event without an event_id; it cannot be recorded once, so it is ignored");
        return Ok(());
    }
    if !record_event(ctx, &callback.event_id.0).await? {
        // A retry of an event already handled: acknowledge, change nothing.
        return Ok(());
    }
    if let SlackEventCallbackBody::AppHomeOpened(opened) = &callback.event {
        let home = opened.tab.as_deref().is_none_or(|t| t == "home");
        if let (true, Ok(user)) = (home, UserId::parse(&opened.user.0)) {
            if let Err(e) = ctx.store.remember_home_user(user.as_str(), ctx.now()).await {
                tracing::warn!(error = %e, "could not remember an App Home user");
            }
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::worker::handlers::publish_home(&ctx, &user).await {
                    tracing::warn!(error = ?e, slack_user = %user, "could not publish App Home");
                }
            });
        }
    }
    Ok(())
}
