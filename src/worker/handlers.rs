//! One handler per [`Effect`]. Every handler is safe to run twice: it first looks at what is
//! already stored (a posted card, a recorded refund, a sent email) and the Stripe call carries
//! an idempotency key fixed per request.

use crate::context::AppContext;
use crate::domain::policy::{Plan, plan};
use crate::domain::{
    CardFacts, ChargeFacts, ChargeId, Currency, Effect, EmailKind, MessageRef, Money, Notice, PaymentIntentId,
    PaymentRef, PriorRefund, RefundId, RefundRequest, RequestId, RequestStatus, StatusChange, capitalised,
};
use crate::email::{EmailError, mask_address};
use crate::slack::SlackCallError;
use crate::slack::views::{self, Audience};
use crate::storage::{EmailRecord, Job, RefundUpdate, Store, StoreError};
use crate::stripe::types::Expandable;
use crate::stripe::{Charge, CreateRefund, StripeError};
use chrono::DateTime;
use slack_morphism::SlackTs;
use std::time::Duration;

/// Why a job did not finish.
#[derive(Debug)]
pub enum JobError {
    /// Try again later (after the given delay, or the runner's backoff).
    Retry { reason: String, after: Option<Duration> },
    /// Retrying cannot help; park it for a person.
    Permanent(String),
    /// Not due yet: run again after this long, without counting an attempt.
    Defer(Duration),
}

impl JobError {
    fn retry(reason: impl ToString) -> Self {
        JobError::Retry { reason: reason.to_string(), after: None }
    }
}

impl From<StoreError> for JobError {
    fn from(e: StoreError) -> Self {
        JobError::retry(e)
    }
}

/// A Stripe error that is no business answer: try again (after Stripe's delay, when it gave one).
fn stripe_retry(e: StripeError) -> JobError {
    match e {
        StripeError::RateLimited(after) => JobError::Retry { reason: e.to_string(), after },
        StripeError::Idempotency(m) => JobError::Permanent(m),
        // Retrying cannot grant a permission: the job parks at once, and finance is told.
        e @ StripeError::Forbidden { .. } => JobError::Permanent(e.to_string()),
        other => JobError::retry(other),
    }
}

impl From<SlackCallError> for JobError {
    fn from(e: SlackCallError) -> Self {
        if e.is_retryable() {
            JobError::Retry { after: e.retry_after(), reason: e.to_string() }
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

/// How long Slack takes posts to a slash command's `response_url`.
const RESPONSE_URL_MINUTES: i64 = 30;

/// The idempotency key for a request's refund: the same for every try, different across
/// installations.
pub fn idempotency_key(install_id: &str, id: RequestId) -> String {
    format!("refund-desk-{install_id}-{id}")
}

pub async fn run(ctx: &AppContext, job: &Job) -> Result<(), JobError> {
    // Durable before acting: a card edit or a refund must not rest on a decision (or on this
    // job itself) that a power cut could still undo.
    let request = ctx
        .store
        .get_request_durable(job.request_id)
        .await?
        .ok_or_else(|| JobError::Permanent(format!("{} is not stored", job.request_id)))?;
    match &job.effect {
        Effect::CheckPayment => check_payment(ctx, &request).await,
        Effect::PostCard => post_card(ctx, &request).await,
        Effect::RefreshCard => refresh_card(ctx, &request).await,
        Effect::ThreadReply(notice) => thread_reply(ctx, &request, notice, job).await,
        Effect::NotifyRequester(notice) => notify_requester(ctx, &request, notice, job).await,
        Effect::CreateRefund => create_refund(ctx, &request).await,
        Effect::CheckRefund => check_refund(ctx, &request, job).await,
        Effect::Deadline => deadline(ctx, &request).await,
        Effect::RefreshHomes => refresh_homes(ctx, &request).await,
        Effect::RefreshRequesterMessage => refresh_requester_message(ctx, &request).await,
        Effect::RecheckCharge => recheck_charge(ctx, &request).await,
        Effect::ReportParked { job_id, what, error } => report_parked(ctx, &request, *job_id, what, error, job).await,
        Effect::AlertKeyPermission { permission, what } => {
            alert_key_permission(ctx, &request, permission.as_deref(), what, job).await
        }
        Effect::EmailCustomer(kind) => email_customer(ctx, &request, *kind).await,
        Effect::Callback(change) => post_callback(ctx, &request, change).await,
    }
}

/// Posts a status change of an API-made request to the client's callback URL, signed; tried
/// again with backoff until it lands (then parked and reported, as any job), in order: the
/// next change of the request waits behind it in its lane.
async fn post_callback(ctx: &AppContext, request: &RefundRequest, change: &StatusChange) -> Result<(), JobError> {
    let Some(client) = &ctx.callback else {
        // The request was made while a callback URL was set; it has been removed since. Parked
        // (and reported), not dropped: set the URL again and retry the job.
        return Err(JobError::Permanent("REFUND_DESK_CALLBACK_URL is no longer set".into()));
    };
    let event = crate::callback::StatusEvent::new(ctx.store.install_id(), request, change);
    client.deliver(&event, ctx.now()).await.map_err(|e| {
        let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
        JobError::retry(format!("{e}{cause}"))
    })
}

/// What Stripe says about the charge, without the customer's email (read separately, only when needed).
pub(crate) fn facts_of(charge: &Charge) -> Result<ChargeFacts, String> {
    let currency = Currency::parse(&charge.currency).map_err(|e| e.to_string())?;
    let captured = if charge.amount_captured > 0 { charge.amount_captured } else { charge.amount };
    let refunds = charge.refunds.as_ref().map(|list| {
        list.data
            .iter()
            .filter_map(|r| {
                Some(PriorRefund {
                    id: RefundId::parse(&r.id).ok()?,
                    amount: Money::new(r.amount, currency),
                    status: r.status.clone().unwrap_or_default(),
                    request: r.metadata.get("refund_request_id").and_then(|v| RequestId::parse(v).ok()),
                })
            })
            .collect()
    });
    Ok(ChargeFacts {
        charge: ChargeId::parse(&charge.id).map_err(|e| e.to_string())?,
        payment_intent: charge.payment_intent.as_ref().and_then(|p| PaymentIntentId::parse(p.id()).ok()),
        amount: Money::new(captured, currency),
        amount_refunded: Money::new(charge.amount_refunded, currency),
        created: DateTime::from_timestamp(charge.created, 0).unwrap_or_default(),
        customer_email: None,
        customer_name: charge.billing_details.as_ref().and_then(|b| b.name.clone()),
        card: charge
            .payment_method_details
            .as_ref()
            .and_then(|d| d.card.as_ref())
            .and_then(|c| Some(CardFacts { brand: c.brand.clone()?, last4: c.last4.clone()? })),
        refunds,
        fraud_warnings: vec![],
        disputes: vec![],
        unreadable: vec![],
    })
}

/// Why the charge cannot be refunded at all, whatever the amount.
pub(crate) fn unrefundable(charge: &Charge, facts: &ChargeFacts) -> Option<String> {
    let status = charge.status.as_deref().unwrap_or("unknown");
    if status != "succeeded" {
        return Some(format!("the charge `{}` has not succeeded (Stripe says `{status}`)", charge.id));
    }
    if !charge.captured {
        return Some(format!(
            "the charge `{}` was never captured, so there is nothing to refund; release the authorization in Stripe instead",
            charge.id
        ));
    }

    if charge.refunded || facts.remaining().is_zero() {
        return Some(format!("the charge `{}` is already fully refunded", charge.id));
    }
    None
}

fn stripe_failure(e: StripeError, what: &str) -> Result<String, JobError> {
    match e {
        StripeError::Forbidden { permission, .. } => Ok(format!(
            "refund-desk's Stripe key may not read {what}{}; an admin has been told",
            permission.map(|p| format!(" (it lacks `{p}`)")).unwrap_or_default()
        )),
        StripeError::NotFound(_) => Ok(format!("Stripe has no {what}; check the id")),
        StripeError::Refused { message, .. } => Ok(format!("Stripe refused to show {what}: {message}")),
        e => Err(stripe_retry(e)),
    }
}

/// The customer's address: the charge's billing email, else its receipt email, else the
/// customer's. A key that may not read customers leaves it unknown, and says so in
/// `unreadable`.
async fn customer_email(
    ctx: &AppContext,
    charge: &Charge,
    unreadable: &mut Vec<String>,
) -> Result<Option<String>, JobError> {
    let direct = charge
        .billing_details
        .as_ref()
        .and_then(|b| b.email.clone())
        .or_else(|| charge.receipt_email.clone())
        .filter(|e| !e.trim().is_empty());
    if direct.is_some() {
        return Ok(direct);
    }
    let Some(customer) = &charge.customer else {
        return Ok(None);
    };
    if let crate::stripe::types::Expandable::Object(c) = customer {
        return Ok(c.email.clone());
    }
    match ctx.stripe.get_customer(customer.id()).await {
        Ok(c) if !c.deleted => Ok(c.email.filter(|e| !e.trim().is_empty())),
        Ok(_) | Err(StripeError::NotFound(_)) => Ok(None),
        Err(StripeError::Forbidden { permission, .. }) => {
            unreadable.push(described("The customer (for the email address)", permission));
            Ok(None)
        }
        Err(e @ (StripeError::Unavailable(_) | StripeError::RateLimited(_))) => Err(stripe_retry(e)),
        Err(e) => Err(JobError::Permanent(e.to_string())),
    }
}

async fn check_payment(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    if request.status != RequestStatus::Requested {
        return Ok(());
    }
    let charge = match &request.target {
        PaymentRef::Charge(id) => ctx.stripe.get_charge(id.as_str()).await.map_err(|e| (e, format!("charge `{id}`"))),
        PaymentRef::PaymentIntent(pi) => match ctx.stripe.get_payment_intent(pi.as_str()).await {
            Err(e) => Err((e, format!("payment intent `{pi}`"))),
            Ok(intent) => match &intent.latest_charge {
                None => {
                    return reject(
                        ctx,
                        request,
                        format!("the payment intent `{pi}` has no charge yet (Stripe says `{}`)", intent.status),
                        None,
                    )
                    .await;
                }
                // Read with the intent (expanded), unless Stripe sent only its id.
                Some(Expandable::Object(charge)) => Ok(*charge.clone()),
                Some(c) => ctx.stripe.get_charge(c.id()).await.map_err(|e| (e, format!("charge `{}`", c.id()))),
            },
        },
    };
    let charge = match charge {
        Ok(c) => c,
        Err((StripeError::Forbidden { permission, message }, what)) => {
            tracing::error!(permission = ?permission, error = %message, "the Stripe key may not read what a check needs");
            let why = stripe_failure(StripeError::Forbidden { permission: permission.clone(), message }, &what)?;
            let alert = Effect::AlertKeyPermission { permission, what: format!("read {what}") };
            return reject_with(ctx, request, why, None, vec![alert]).await;
        }
        Err((e, what)) => {
            let why = stripe_failure(e, &what)?;
            return reject(ctx, request, why, None).await;
        }
    };
    let mut facts = match facts_of(&charge) {
        Ok(f) => f,
        Err(why) => {
            return reject(ctx, request, format!("Stripe's answer about {} could not be read: {why}", charge.id), None)
                .await;
        }
    };
    if let Some(why) = unrefundable(&charge, &facts) {
        return reject(ctx, request, why, Some(facts)).await;
    }
    // Only for a charge worth asking about: this may cost a read of the customer.
    facts.customer_email = customer_email(ctx, &charge, &mut facts.unreadable).await?;
    // A disputed charge can still be refunded while Stripe says so (an inquiry, a dispute
    // not yet decided); once it says no, the money goes back through the dispute.
    let disputes = if !charge.disputed {
        vec![]
    } else {
        match ctx.stripe.disputes(&charge.id).await {
            Ok(list) => list,
            // Stripe refuses the refund itself if the dispute forbids it.
            Err(StripeError::Forbidden { permission, .. }) => {
                facts.unreadable.push(described("The charge's disputes", permission));
                vec![]
            }
            Err(e) => return Err(stripe_retry(e)),
        }
    };
    if !disputes.is_empty() {
        let describe = |d: &crate::stripe::types::Dispute| {
            format!("{}, {}", d.status, d.reason.as_deref().unwrap_or("no reason given"))
        };
        if let Some(closed) = disputes.iter().find(|d| !d.is_charge_refundable) {
            let why = format!(
                "the charge `{}` is disputed ({}) and Stripe no longer allows refunding it; the money goes back through the dispute",
                charge.id,
                describe(closed)
            );
            return reject(ctx, request, why, Some(facts)).await;
        }
        facts.disputes = disputes.iter().map(describe).collect();
    }
    facts.fraud_warnings = if !card_networks_can_warn(&charge) {
        vec![]
    } else {
        match ctx.stripe.early_fraud_warnings(&charge.id).await {
            Ok(list) => list.into_iter().map(|w| w.fraud_type.unwrap_or_else(|| "unspecified".into())).collect(),
            Err(e @ (StripeError::Unavailable(_) | StripeError::RateLimited(_))) => return Err(stripe_retry(e)),
            // A restricted key without Radar access: go on without, and say so on the card.
            Err(StripeError::Forbidden { permission, .. }) => {
                facts.unreadable.push(described("Radar's early fraud warnings", permission));
                vec![]
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read early fraud warnings");
                vec![]
            }
        }
    };
    // The amount and the policy are decided inside the transaction, against the holds of the
    // other requests open on this charge.
    let (policy, now) = (&ctx.settings.policy, ctx.now());
    let charge_id = facts.charge.clone();
    let outcome = ctx
        .store
        .transition_on_charge(request.id, &charge_id, now, |r, holds| {
            let t = match plan(r.id, &r.asked, r.reason, &facts, holds, policy, now) {
                Plan::Refuse(why) => r.reject(capitalised(&why), Some(facts.clone()), now),
                Plan::Go(amount, decision) => r.accept(facts.clone(), amount, decision, now),
            };
            t.map(Some)
        })
        .await?;
    if let Err(e) = outcome {
        tracing::info!(error = %e, "the request moved on before its check finished");
    }
    Ok(())
}

/// Whether Radar can hold an early fraud warning for the charge: card networks send them, so
/// only card payments can have one. A charge paid otherwise (a bank debit, a transfer) costs no
/// Radar read; one whose method is not given is read, to be safe.
fn card_networks_can_warn(charge: &Charge) -> bool {
    match charge.payment_method_details.as_ref() {
        Some(d) if d.card.is_some() => true,
        Some(d) => d.kind.as_deref().is_none_or(|kind| kind.starts_with("card") || kind == "interac_present"),
        None => true,
    }
}

async fn reject(
    ctx: &AppContext,
    request: &RefundRequest,
    why: String,
    facts: Option<ChargeFacts>,
) -> Result<(), JobError> {
    reject_with(ctx, request, why, facts, vec![]).await
}

/// Rejects the request, with `more` effects in the same transition.
async fn reject_with(
    ctx: &AppContext,
    request: &RefundRequest,
    why: String,
    facts: Option<ChargeFacts>,
    more: Vec<Effect>,
) -> Result<(), JobError> {
    let now = ctx.now();
    let why = capitalised(&why);
    ctx.store
        .transition(request.id, now, |r| {
            let mut t = r.reject(why.clone(), facts.clone(), now)?;
            t.effects.extend(more.iter().cloned());
            Ok::<_, crate::domain::StateError>(Some(t))
        })
        .await?
        .ok();
    Ok(())
}

/// `what` could not be read, with the permission Stripe named.
fn described(what: &str, permission: Option<String>) -> String {
    match permission {
        Some(p) => format!("{what} (`{p}`)"),
        None => what.to_string(),
    }
}

async fn post_card(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    let (others, more) = ctx.store.others_on_payment(request, views::OTHERS_SHOWN).await?;
    if request.card.is_none() {
        let channel = ctx.settings.slack.finance_channel.clone();
        let card = views::approval_card(request, (&others, more), ctx.now());
        let ts = ctx.slack.post_message(&channel.as_str().into(), card, None).await?;
        let card = MessageRef { channel, ts: ts.0 };
        ctx.store.update_request(request.id, |r| r.card = Some(card.clone())).await?;
    }
    // The cards already posted on this payment list this request from now on. (Run again after
    // a crash, this only edits those cards once more.)
    for other in others.iter().filter(|o| o.card.is_some() && o.status.is_open()) {
        ctx.store.enqueue(other.id, &[Effect::RefreshCard], ctx.now()).await?;
    }
    Ok(())
}

fn card_of(request: &RefundRequest) -> Result<&MessageRef, JobError> {
    // Jobs of one lane run in order, so the card exists unless posting it is still retrying.
    request.card.as_ref().ok_or_else(|| JobError::retry("the approval card is not posted yet"))
}

/// Reads the charge again after a refund made outside the desk, keeps what remains on the
/// request, and has the card show it.
async fn recheck_charge(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    let Some(known) = request.charge.clone() else { return Ok(()) };
    if !request.status.is_open() {
        return Ok(());
    }
    let charge = ctx.stripe.get_charge(known.charge.as_str()).await.map_err(stripe_retry)?;
    let fresh = facts_of(&charge).map_err(JobError::Permanent)?;
    ctx.store
        .update_request(request.id, |r| {
            if let Some(facts) = r.charge.as_mut() {
                facts.amount_refunded = fresh.amount_refunded;
                facts.refunds = fresh.refunds.clone();
            }
        })
        .await?;
    if request.card.is_some() {
        ctx.store.enqueue(request.id, &[Effect::RefreshCard], ctx.now()).await?;
    }
    Ok(())
}

async fn refresh_card(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    let card = card_of(request)?;
    let others = ctx.store.others_on_payment(request, views::OTHERS_SHOWN).await?;
    let content = views::approval_card(request, (&others.0, others.1), ctx.now());
    ctx.slack.update_message(&card.channel.as_str().into(), &card.ts.as_str().into(), content).await?;
    Ok(())
}

async fn thread_reply(ctx: &AppContext, request: &RefundRequest, notice: &Notice, job: &Job) -> Result<(), JobError> {
    if job.posted_ts.is_some() {
        return Ok(());
    }
    let card = card_of(request)?;
    let text = views::notice_text(request, notice, Audience::Thread);
    let ts = ctx
        .slack
        .post_message(&card.channel.as_str().into(), views::text_message(text), Some(&card.ts.as_str().into()))
        .await?;
    ctx.store.record_job_posted(job, &ts.0).await?;
    Ok(())
}

async fn notify_requester(
    ctx: &AppContext,
    request: &RefundRequest,
    notice: &Notice,
    job: &Job,
) -> Result<(), JobError> {
    if *notice == Notice::WithFinance {
        return tell_requester_with_finance(ctx, request, job).await;
    }
    if job.posted_ts.is_some() {
        return Ok(());
    }
    let text = views::notice_text(request, notice, Audience::Requester);
    // A refusal replaces the "Got it" answer where the person typed `/refund`, while Slack
    // still takes it there (30 minutes); a direct message only if that fails.
    if *notice == Notice::Rejected
        && let Some(url) = &request.response_url
        && ctx.now() - request.created_at < chrono::Duration::minutes(RESPONSE_URL_MINUTES)
    {
        match ctx.slack.replace_answer(url, text.clone()).await {
            Ok(()) => {
                ctx.store.record_job_posted(job, "response_url").await?;
                return Ok(());
            }
            Err(e) => tracing::warn!(error = %e, "could not replace the command's answer; sending a direct message"),
        }
    }
    // Posting to a user id lands in the app's direct message with them.
    let ts = ctx
        .slack
        .post_message(&crate::slack::direct_message(&request.requester), views::text_message(text), None)
        .await?;
    ctx.store.record_job_posted(job, &ts.0).await?;
    Ok(())
}

/// Once the card is posted, tells the requester their request is with finance, with the
/// Remind approvers button. The message is recorded on the request, and every later change of
/// the card edits it too ([`Effect::RefreshRequesterMessage`], queued behind this job in the
/// requester's lane, so a decision made while it was posted still reaches it).
async fn tell_requester_with_finance(ctx: &AppContext, request: &RefundRequest, job: &Job) -> Result<(), JobError> {
    if request.requester_message.is_some() {
        return Ok(());
    }
    // Posted by an earlier try that could not record it on the request: record it now.
    if let Some((channel, ts)) = job.posted_ts.as_deref().and_then(|p| p.split_once(' ')) {
        let message = MessageRef { channel: channel.to_string(), ts: ts.to_string() };
        ctx.store.update_request(request.id, |r| r.requester_message = Some(message.clone())).await?;
        return Ok(());
    }
    if request.status != RequestStatus::AwaitingApproval {
        // Decided before this ran: the outcome has its own message.
        return Ok(());
    }
    if request.card.is_none() {
        // The card goes first (another lane). One that cannot be posted parks and is reported
        // to finance; after an hour without it, the requester hears the outcome instead.
        let waited = (ctx.now() - job.created_at).num_seconds();
        if waited > 3600 {
            tracing::warn!(request_id = %request.id, "no card after an hour: the requester is not told it is with finance");
            return Ok(());
        }
        return Err(JobError::Defer(Duration::from_secs(if waited < 60 { 2 } else { 60 })));
    }
    let (channel, ts) = ctx.slack.post_direct_message(&request.requester, views::with_finance_message(request)).await?;
    // On the job the moment Slack answers (so a retry never posts twice), then on the request.
    ctx.store.record_job_posted(job, &format!("{} {}", channel.0, ts.0)).await?;
    let message = MessageRef { channel: channel.0, ts: ts.0 };
    ctx.store.update_request(request.id, |r| r.requester_message = Some(message.clone())).await?;
    Ok(())
}

/// Edits the requester's "with finance" message to show where the request stands (its button
/// goes once it no longer waits).
async fn refresh_requester_message(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    if let Some(m) = &request.requester_message {
        let content = views::with_finance_message(request);
        ctx.slack.update_message(&m.channel.as_str().into(), &m.ts.as_str().into(), content).await?;
    }
    Ok(())
}

async fn create_refund(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    if request.status != RequestStatus::Approved || request.refund.is_some() {
        return Ok(());
    }
    let amount =
        request.amount.ok_or_else(|| JobError::Permanent(format!("{} was approved without an amount", request.id)))?;
    let now = ctx.now();
    // Stripe forgets idempotency keys after 24 hours. Any refund made for this request (by an
    // earlier try of this job, or by a store since lost and restored from a backup, or copied
    // by `migrate`) was made after the request was: while the request is younger than that,
    // Stripe's key still answers for it; once older, look for the refund first.
    let request_age = (now - request.created_at).to_std().unwrap_or_default();
    if request_age >= ctx.settings.stripe.idempotency_horizon
        && let Some(existing) = find_existing_refund(ctx, request).await?
    {
        tracing::warn!(refund = %existing.id, "found the refund an earlier try made; not creating another");
        return record_refund(ctx, request, existing, now).await;
    }
    let call = CreateRefund {
        target: request.target.clone(),
        amount,
        reason: request.reason.stripe_reason(),
        request_id: request.id,
        install_id: ctx.store.install_id().to_string(),
    };
    let key = idempotency_key(ctx.store.install_id(), request.id);
    match ctx.stripe.create_refund(&call, &key).await {
        Ok(refund) => record_refund(ctx, request, refund, now).await,
        Err(StripeError::Refused { message, .. }) | Err(StripeError::NotFound(message)) => {
            // "Already refunded" may be our own earlier try whose answer was lost.
            if let Some(existing) = find_existing_refund(ctx, request).await? {
                return record_refund(ctx, request, existing, now).await;
            }
            let why = format!("Stripe refused the refund: {message}");
            ctx.store.transition(request.id, now, |r| r.fail_submission(why.clone(), now).map(Some)).await?.ok();
            Ok(())
        }
        // The key may not make refunds: no refund was made, and none will be until an admin
        // gives the key that permission.
        Err(StripeError::Forbidden { permission, message }) => {
            tracing::error!(permission = ?permission, error = %message, "the Stripe key may not create refunds");
            // An earlier try may have made the refund before the key lost the permission. A key
            // that may not read refunds either cannot say: the request fails, as it must.
            let existing = match find_existing_refund(ctx, request).await {
                Ok(found) => found,
                Err(JobError::Permanent(why)) => {
                    tracing::warn!(error = %why, "could not look for an earlier try's refund");
                    None
                }
                Err(e) => return Err(e),
            };
            if let Some(existing) = existing {
                return record_refund(ctx, request, existing, now).await;
            }
            let why = format!(
                "refund-desk's Stripe key may not make refunds{}; nothing was refunded, and an admin has been told",
                permission.as_ref().map(|p| format!(" (it lacks `{p}`)")).unwrap_or_default()
            );
            let alert = Effect::AlertKeyPermission { permission, what: "make refunds".into() };
            ctx.store
                .transition(request.id, now, |r| {
                    let mut t = r.fail_submission(capitalised(&why), now)?;
                    t.effects.push(alert.clone());
                    Ok::<_, crate::domain::StateError>(Some(t))
                })
                .await?
                .ok();
            Ok(())
        }
        Err(e) => Err(stripe_retry(e)),
    }
}

/// Records `refund` (made by this call, or found from an earlier try) as the request's.
async fn record_refund(
    ctx: &AppContext,
    request: &RefundRequest,
    refund: crate::stripe::Refund,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), JobError> {
    let refund_id = RefundId::parse(&refund.id).map_err(|e| JobError::Permanent(e.to_string()))?;
    let status = refund.status.unwrap_or_else(|| "pending".into());
    // A refused transition means a webhook already moved the request on; nothing to do.
    ctx.store.submit_refund(request.id, refund_id, &status, now).await?.ok();
    Ok(())
}

/// After a restore from a backup, before any job runs: every request whose refund was approved
/// or under way is checked against Stripe, since the backup may predate what Stripe did. An
/// approved request whose refund Stripe already made records it (so none is made again); a
/// submitted or pending one takes Stripe's current status. Returns how many were checked.
pub async fn reconcile_restored(ctx: &AppContext) -> anyhow::Result<usize> {
    let mut checked = 0;
    let now = ctx.now();
    for status in [RequestStatus::Approved, RequestStatus::Submitted, RequestStatus::Pending] {
        for request in ctx.store.requests_with_status(status, 1_000_000).await? {
            checked += 1;
            let failed = |e: JobError| anyhow::anyhow!("{}: {e:?}", request.id);
            match &request.refund {
                None => {
                    if let Some(existing) = find_existing_refund(ctx, &request).await.map_err(failed)? {
                        tracing::warn!(request_id = %request.id, refund = %existing.id, "restored: Stripe already made this refund");
                        record_refund(ctx, &request, existing, now).await.map_err(failed)?;
                    }
                }
                Some(refund) => {
                    let update = read_back(ctx, &request, refund).await?;
                    ctx.store.apply_refund_updates(None, std::slice::from_ref(&update), now).await?;
                }
            }
        }
    }
    Ok(checked)
}

/// A refund on the request's charge that this request [may claim](RefundRequest::may_claim):
/// its metadata names this installation and this request.
async fn find_existing_refund(
    ctx: &AppContext,
    request: &RefundRequest,
) -> Result<Option<crate::stripe::Refund>, JobError> {
    let Some(charge) = request.charge.as_ref().map(|c| c.charge.clone()) else { return Ok(None) };
    let refunds = ctx.stripe.list_refunds(charge.as_str()).await.map_err(stripe_retry)?;
    let install = ctx.store.install_id();
    Ok(refunds
        .into_iter()
        .find(|r| crate::stripe::webhook::update_from(r).is_some_and(|u| request.may_recover(&u, install))))
}

/// What Stripe says now of `refund`, the one recorded for `request` (which is what makes it
/// this request's).
async fn read_back(
    ctx: &AppContext,
    request: &RefundRequest,
    refund: &crate::domain::RefundRecord,
) -> Result<RefundUpdate, StripeError> {
    let current = ctx.stripe.get_refund(refund.id.as_str()).await?;
    Ok(RefundUpdate {
        refund: refund.id.clone(),
        status: current.status.unwrap_or_else(|| refund.stripe_status.clone()),
        failure_reason: current.failure_reason,
        request_hint: Some(request.id),
        install: None,
        charge: None,
        payment_intent: None,
        amount: None,
    })
}

/// A refund still pending with no webhook is read back from Stripe, so a lost webhook cannot
/// leave a request hanging.
async fn check_refund(ctx: &AppContext, request: &RefundRequest, job: &Job) -> Result<(), JobError> {
    let interval = ctx.settings.stripe.pending_check_after;
    if !matches!(request.status, RequestStatus::Approved | RequestStatus::Submitted | RequestStatus::Pending) {
        return Ok(());
    }
    let now = ctx.now();
    // The first read waits one interval after submission; later ones are spaced by Defer.
    let due = job.created_at + chrono::Duration::from_std(interval).unwrap_or_default();
    if now < due {
        return Err(JobError::Defer((due - now).to_std().unwrap_or(interval)));
    }
    let Some(refund) = &request.refund else { return Err(JobError::Defer(interval)) };
    let update = read_back(ctx, request, refund).await.map_err(stripe_retry)?;
    let still_pending = matches!(update.status.as_str(), "pending" | "requires_action");
    ctx.store.apply_refund_updates(None, std::slice::from_ref(&update), now).await?;
    if still_pending { Err(JobError::Defer(interval)) } else { Ok(()) }
}

/// The policy's deadlines for a waiting request, in order of time: remind the approvers once,
/// escalate once, expire.
async fn deadline(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    if request.status != RequestStatus::AwaitingApproval {
        return Ok(());
    }
    let policy = &ctx.settings.policy;
    let since = request.awaiting_since.unwrap_or(request.updated_at);
    let at = |d: std::time::Duration| since + chrono::Duration::from_std(d).unwrap_or_default();
    let now = ctx.now();
    if let Some(expire) = policy.expire_after.map(at)
        && now >= expire
    {
        ctx.store.transition(request.id, now, |r| r.expire(now).map(Some)).await?.ok();
        return Ok(());
    }
    let remind = policy.remind_after.map(at).filter(|_| request.reminded_at.is_none());
    let escalate = policy.escalate_after.map(at).filter(|_| request.escalated_at.is_none());
    if remind.is_some_and(|t| now >= t) || escalate.is_some_and(|t| now >= t) {
        let authority = ctx.authority().await?;
        if remind.is_some_and(|t| now >= t) {
            ctx.store.transition(request.id, now, |r| r.remind(&authority, now).map(Some)).await?.ok();
        }
        if escalate.is_some_and(|t| now >= t) {
            ctx.store.transition(request.id, now, |r| r.escalate(&authority, now).map(Some)).await?.ok();
        }
    }
    // Wait for whichever deadline is next.
    let next = [remind, escalate, policy.expire_after.map(at)].into_iter().flatten().filter(|t| *t > now).min();
    match next {
        Some(t) => Err(JobError::Defer((t - now).to_std().unwrap_or_default())),
        None => Ok(()),
    }
}

/// Publishes App Home for the requester and everyone who may decide, who uses it.
async fn refresh_homes(ctx: &AppContext, request: &RefundRequest) -> Result<(), JobError> {
    let authority = ctx.authority().await?;
    let mut people = vec![request.requester.clone()];
    let deciders = authority.approvers.iter().chain(authority.seniors.iter()).chain(authority.escalation.iter());
    for user in deciders.chain(authority.delegations.iter().map(|d| &d.to)) {
        if !people.contains(user) {
            people.push(user.clone());
        }
    }
    for user in people {
        if ctx.store.has_home(user.as_str()).await? {
            publish_home(ctx, &user).await?;
        }
    }
    Ok(())
}

/// One person's App Home, from the indexes: never a scan of every request. The queue holds
/// what `user` may decide now: as an approver, a senior, an escalation approver, or a delegate.
pub async fn home_for(
    store: &Store,
    user: &crate::domain::UserId,
    authority: &crate::domain::Authority,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<slack_morphism::prelude::SlackView, StoreError> {
    let is_approver = authority.may_see_queue(user);
    // Oldest first; more than the view shows, since some are the person's own.
    let waiting = if is_approver {
        let all = store.requests_with_status(RequestStatus::AwaitingApproval, 200).await?;
        all.into_iter().filter(|r| r.may_deny(user, authority).is_ok()).collect()
    } else {
        vec![]
    };
    let mine = store.requests_of(user.as_str(), views::HOME_LIST_LIMIT).await?;
    let (requested_today, refunded_today) = store.totals_on(now.date_naive()).await?;
    Ok(views::home_view(&views::HomeParams {
        user,
        is_approver,
        waiting: &waiting,
        mine: &mine,
        requested_today,
        refunded_today: &refunded_today,
        now,
    }))
}

/// Builds and publishes one person's App Home.
pub async fn publish_home(ctx: &AppContext, user: &crate::domain::UserId) -> Result<(), JobError> {
    let view = home_for(&ctx.store, user, &ctx.authority().await?, ctx.now()).await?;
    ctx.slack.publish_home(&user.into(), view).await?;
    Ok(())
}

/// Tells finance that the Stripe key lacks a permission the desk cannot work without.
async fn alert_key_permission(
    ctx: &AppContext,
    request: &RefundRequest,
    permission: Option<&str>,
    what: &str,
    job: &Job,
) -> Result<(), JobError> {
    if job.posted_ts.is_some() {
        return Ok(());
    }
    // One alert an hour per missing permission: every request fails the same way until an
    // admin fixes the key, and each requester is told already.
    let now = ctx.now();
    let cause = alert_cause(permission, what);
    if !ctx.store.claim_alert(&cause, job.id, now - chrono::Duration::hours(1), now).await? {
        ctx.store.record_job_posted(job, "suppressed: alerted within the hour").await?;
        return Ok(());
    }
    let lacks = permission.map(|p| format!(": it lacks `{p}`")).unwrap_or_default();
    let text = format!(
        ":no_entry: refund-desk's Stripe key may not {what}{lacks}. {} failed because of it, and every request will until the key has that permission (the README lists what a restricted key needs; `refund-desk check` names every missing one).",
        request.id
    );
    let ts = post_alert(ctx, request, text).await?;
    ctx.store.record_job_posted(job, &ts).await?;
    Ok(())
}

/// What an alert about a missing Stripe permission is about, for its once-an-hour claim.
pub fn alert_cause(permission: Option<&str>, what: &str) -> String {
    format!("stripe-permission/{}", permission.unwrap_or(what))
}

/// Slack's answers when the bot cannot post in a channel at all.
const CHANNEL_REFUSALS: [&str; 4] = ["not_in_channel", "channel_not_found", "is_archived", "restricted_action"];

/// Posts an alert for finance: in the card's thread (or the finance channel); if Slack refuses
/// the bot the channel itself, to every approver by DM instead, saying why. Returns a ts for
/// [`Store::record_job_posted`].
async fn post_alert(ctx: &AppContext, request: &RefundRequest, text: String) -> Result<String, JobError> {
    let channel = &ctx.settings.slack.finance_channel;
    let thread = request.card.as_ref().map(|c| SlackTs(c.ts.clone()));
    let posted =
        ctx.slack.post_message(&channel.as_str().into(), views::text_message(text.clone()), thread.as_ref()).await;
    let refusal = match posted {
        Ok(ts) => return Ok(ts.0),
        Err(SlackCallError::Refused(code)) if CHANNEL_REFUSALS.contains(&code.as_str()) => code,
        Err(e) => return Err(e.into()),
    };
    tracing::error!(channel = %channel, error = %refusal, "the finance channel refuses the bot; alerting approvers by DM");
    let dm = format!(
        "{text}\n_(Sent to you because Slack refuses refund-desk the finance channel `{channel}`: `{refusal}`. Invite the bot there.)_"
    );
    let mut first = None;
    for approver in ctx.approvers().iter() {
        let ts = ctx
            .slack
            .post_message(&crate::slack::direct_message(approver), views::text_message(dm.clone()), None)
            .await?;
        first.get_or_insert(ts.0);
    }
    first.ok_or_else(|| {
        JobError::Permanent(format!("the finance channel refuses the bot ({refusal}) and there is no approver to tell"))
    })
}

async fn report_parked(
    ctx: &AppContext,
    request: &RefundRequest,
    job_id: u64,
    what: &str,
    error: &str,
    job: &Job,
) -> Result<(), JobError> {
    if job.posted_ts.is_some() {
        return Ok(());
    }
    let text = format!(
        ":rotating_light: {} is stuck: {what} failed {} times ({}). It will not be retried on its own; once the cause is fixed, run `refund-desk jobs retry {job_id}`.",
        request.id,
        ctx.settings.jobs.max_attempts,
        views::escape(error)
    );
    // In the card's thread when there is a card, else in the channel itself.
    let ts = post_alert(ctx, request, text).await?;
    ctx.store.record_job_posted(job, &ts).await?;
    Ok(())
}

async fn email_customer(ctx: &AppContext, request: &RefundRequest, kind: EmailKind) -> Result<(), JobError> {
    if ctx.store.email_sent(request.id, kind).await?.is_some() {
        return Ok(());
    }
    // Denial and failure emails only where the policy asks for them.
    let policy = &ctx.settings.policy;
    let wanted = match kind {
        EmailKind::RefundSucceeded => true,
        EmailKind::RequestDenied => policy.email_customer_on_deny,
        EmailKind::RefundFailed => policy.email_customer_on_failure,
    };
    if !wanted {
        return Ok(());
    }
    let now = ctx.now();
    let not_emailed = |why: &str| vec![Effect::ThreadReply(Notice::CustomerNotEmailed { why: why.to_string() })];
    let Some(mailer) = &ctx.mailer else {
        ctx.store.enqueue(request.id, &not_emailed("customer email is off (SMTP_URL is not set)."), now).await?;
        return Ok(());
    };
    // The address the requester gave, else what Stripe knows.
    let address =
        request.customer_email.clone().or_else(|| request.charge.as_ref().and_then(|c| c.customer_email.clone()));
    let Some(to) = address else {
        ctx.store.enqueue(request.id, &not_emailed("Stripe has no email address for this payment."), now).await?;
        return Ok(());
    };
    let message_id = mailer.message_id(request, kind, ctx.store.install_id());
    let message = match mailer.message(kind, request, &to, &message_id) {
        Ok(m) => m,
        Err(e) => {
            ctx.store.enqueue(request.id, &not_emailed(&e.to_string()), now).await?;
            return Ok(());
        }
    };
    match mailer.send(message).await {
        Ok(()) => {
            let record = EmailRecord { to: to.clone(), sent_at: now, message_id };
            let announce =
                [Effect::ThreadReply(Notice::CustomerEmailed { to: mask_address(&to), kind, at: Some(now) })];
            ctx.store.record_email_sent(request.id, kind, &record, &announce, now).await?;
            Ok(())
        }
        // 4xx and timeouts: the job queue tries again later.
        Err(EmailError::Temporary(m)) => Err(JobError::retry(m)),
        // 5xx or a bad address: retrying will not help; finance reads why in the thread.
        Err(e) => {
            ctx.store.enqueue(request.id, &not_emailed(&e.to_string()), now).await?;
            Ok(())
        }
    }
}
