//! A refund request, its states, and every transition between them.
//!
//! Each transition checks the request's current state, changes it, and returns a
//! [`Transition`]: who acted and which side effects ([`Effect`]s) must follow. Storage writes the
//! new state, the audit entry and the effects' jobs in one transaction; nothing here does I/O.

use super::command::{AmountAsked, Note, RefundReason};
use super::ids::{ChargeId, PaymentIntentId, PaymentRef, RefundId, RequestId, UserId};
use super::money::Money;
use super::policy::{PolicyDecision, Route};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a request is in its life. See DESIGN.md for the diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Stored; the charge is being checked at Stripe.
    Requested,
    /// Checked; the approval card is in the finance channel.
    AwaitingApproval,
    /// Approved; the refund is about to be (or being) sent to Stripe.
    Approved,
    /// Stripe accepted the refund.
    Submitted,
    /// Stripe reports the refund pending.
    Pending,
    Succeeded,
    Failed,
    Canceled,
    Denied,
    /// The charge could not be refunded as asked; nothing was sent to Stripe.
    Rejected,
    Withdrawn,
    Expired,
}

impl RequestStatus {
    /// Whether the request may still lead to a refund (or is one under way at Stripe).
    pub fn is_open(&self) -> bool {
        matches!(
            self,
            RequestStatus::Requested
                | RequestStatus::AwaitingApproval
                | RequestStatus::Approved
                | RequestStatus::Submitted
                | RequestStatus::Pending
        )
    }

    /// The status as API clients read it: `checking` while Stripe is asked, `refused` when the
    /// payment could not be refunded as asked, else the variant's own name.
    pub fn api_name(&self) -> &'static str {
        match self {
            RequestStatus::Requested => "checking",
            RequestStatus::AwaitingApproval => "awaiting_approval",
            RequestStatus::Approved => "approved",
            RequestStatus::Submitted => "submitted",
            RequestStatus::Pending => "pending",
            RequestStatus::Succeeded => "succeeded",
            RequestStatus::Failed => "failed",
            RequestStatus::Canceled => "canceled",
            RequestStatus::Denied => "denied",
            RequestStatus::Rejected => "refused",
            RequestStatus::Withdrawn => "withdrawn",
            RequestStatus::Expired => "expired",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            RequestStatus::Requested => "Checking with Stripe",
            RequestStatus::AwaitingApproval => "Waiting for approval",
            RequestStatus::Approved => "Approved, sending to Stripe",
            RequestStatus::Submitted => "Submitted to Stripe",
            RequestStatus::Pending => "Pending at Stripe",
            RequestStatus::Succeeded => "Refunded",
            RequestStatus::Failed => "Failed",
            RequestStatus::Canceled => "Canceled at Stripe",
            RequestStatus::Denied => "Denied",
            RequestStatus::Rejected => "Refused",
            RequestStatus::Withdrawn => "Withdrawn",
            RequestStatus::Expired => "Expired",
        }
    }

    /// Order of the refund's life once approved; statuses only move up. `None` before approval
    /// and for requests that ended without a refund.
    fn refund_rank(&self) -> Option<u8> {
        Some(match self {
            RequestStatus::Approved => 0,
            RequestStatus::Submitted => 1,
            RequestStatus::Pending => 2,
            // A refund can succeed at first and fail later (Stripe's refund_fail test card),
            // never the other way round.
            RequestStatus::Succeeded => 3,
            RequestStatus::Failed | RequestStatus::Canceled => 4,
            _ => return None,
        })
    }

    /// A stable one-byte code, for index keys.
    pub fn code(&self) -> u8 {
        match self {
            RequestStatus::Requested => 1,
            RequestStatus::AwaitingApproval => 2,
            RequestStatus::Approved => 3,
            RequestStatus::Submitted => 4,
            RequestStatus::Pending => 5,
            RequestStatus::Succeeded => 6,
            RequestStatus::Failed => 7,
            RequestStatus::Canceled => 8,
            RequestStatus::Denied => 9,
            RequestStatus::Rejected => 10,
            RequestStatus::Withdrawn => 11,
            RequestStatus::Expired => 12,
        }
    }

    /// The request status a Stripe refund status stands for.
    pub fn from_stripe_refund_status(status: &str) -> Option<RequestStatus> {
        Some(match status {
            "pending" | "requires_action" => RequestStatus::Pending,
            "succeeded" => RequestStatus::Succeeded,
            "failed" => RequestStatus::Failed,
            "canceled" => RequestStatus::Canceled,
            _ => return None,
        })
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Card details shown to approvers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardFacts {
    pub brand: String,
    pub last4: String,
}

/// What Stripe said about the charge when the request was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeFacts {
    pub charge: ChargeId,
    pub payment_intent: Option<PaymentIntentId>,
    pub amount: Money,
    pub amount_refunded: Money,
    pub created: DateTime<Utc>,
    pub customer_email: Option<String>,
    /// The name on the payment, for greeting the customer.
    #[serde(default)]
    pub customer_name: Option<String>,
    pub card: Option<CardFacts>,
    /// The refunds Stripe lists on the charge, when it listed them.
    #[serde(default)]
    pub refunds: Option<Vec<PriorRefund>>,
    /// Card networks' early fraud warnings, in words (e.g. `misc`, `made_with_stolen_card`).
    #[serde(default)]
    pub fraud_warnings: Vec<String>,
    /// Disputes Stripe still lets us refund through, in words (status and reason).
    #[serde(default)]
    pub disputes: Vec<String>,
    /// What the Stripe key may not read (a restricted key), in words with the permission
    /// Stripe named: the card says so, and the policy auto-approves nothing it could not see.
    #[serde(default)]
    pub unreadable: Vec<String>,
}

/// A refund Stripe already has on the charge, and the request that made it, if one did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorRefund {
    pub id: RefundId,
    pub amount: Money,
    pub status: String,
    pub request: Option<RequestId>,
}

impl ChargeFacts {
    /// What is still refundable.
    pub fn remaining(&self) -> Money {
        self.amount.checked_sub(&self.amount_refunded).unwrap_or_else(|| Money::new(0, self.amount.currency()))
    }
}

/// Who decided, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: UserId,
    pub at: DateTime<Utc>,
    /// The approver a delegate decided for.
    #[serde(default)]
    pub on_behalf_of: Option<UserId>,
    /// Counts as the senior approval.
    #[serde(default)]
    pub senior: bool,
    /// Why the approver approved, when asked.
    #[serde(default)]
    pub note: Option<String>,
}

impl Decision {
    /// Whether `user` took part in this decision, in person or through a delegate.
    pub fn involves(&self, user: &UserId) -> bool {
        self.by == *user || self.on_behalf_of.as_ref() == Some(user)
    }

    /// `<@by>`, or `<@by> on behalf of <@delegator>`.
    pub fn who(&self) -> String {
        match &self.on_behalf_of {
            Some(d) => format!("<@{}> on behalf of <@{d}>", self.by),
            None => format!("<@{}>", self.by),
        }
    }
}

/// The refund Stripe made for this request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub id: RefundId,
    /// Stripe's own status word, as last reported.
    pub stripe_status: String,
    pub failure_reason: Option<String>,
}

/// A Slack message this app posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRef {
    pub channel: String,
    pub ts: String,
}

/// What Stripe said about one refund: from an event, or read back from Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundUpdate {
    pub refund: RefundId,
    pub status: String,
    pub failure_reason: Option<String>,
    /// From the refund's `metadata[refund_request_id]`, when present.
    pub request_hint: Option<RequestId>,
    /// From `metadata[refund_desk_install]`: the installation that made the refund.
    pub install: Option<String>,
    /// The charge and payment intent the refund is on, as Stripe gives them.
    pub charge: Option<ChargeId>,
    pub payment_intent: Option<PaymentIntentId>,
    /// How much it refunds, when Stripe says (for announcing a refund made outside the desk).
    pub amount: Option<Money>,
}

/// Which request a refund Stripe reports belongs to, the one rule every store applies:
/// the request its id was recorded for (`recorded`); failing that, the request its metadata
/// names (`hinted`) if that request [may claim](RefundRequest::may_claim) it; else none: a
/// refund made outside the desk.
pub fn owner_of_refund(
    recorded: Option<RequestId>,
    hinted: Option<&RefundRequest>,
    update: &RefundUpdate,
    install_id: &str,
) -> Option<RequestId> {
    recorded.or_else(|| hinted.filter(|r| r.may_claim(update, install_id)).map(|r| r.id))
}

/// What a person asked for, before it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    pub requester: UserId,
    pub origin_channel: String,
    pub target: PaymentRef,
    pub amount: AmountAsked,
    pub reason: RefundReason,
    pub note: Option<Note>,
    /// The customer's address, when the requester gave one.
    pub customer_email: Option<String>,
    /// Where the command's private answer can be replaced (Slack's `response_url`), when the
    /// request came from `/refund`.
    pub response_url: Option<String>,
    /// The API client that made the request, when it came through `/api/v1`.
    pub api: Option<ApiOrigin>,
}

/// The API client a request came through: its token's name, and whether its status changes
/// are posted to the callback URL (set when the request is made, so a request keeps the
/// behaviour it was made with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiOrigin {
    pub client: String,
    pub callbacks: bool,
}

/// A status change of an API-made request, for its client's callback: what it was, what it
/// became, and when. Captured with the transition, so a delivery made late still says what
/// happened then, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub from: RequestStatus,
    pub to: RequestStatus,
    pub at: DateTime<Utc>,
    /// The amount to refund, once Stripe's charge is known.
    pub amount: Option<Money>,
    /// Stripe's refund, once there is one.
    pub refund_id: Option<RefundId>,
}

impl NewRequest {
    /// Everything still refundable on `target`, with no note and Stripe's customer address:
    /// what `/refund ch_... <reason>` asks for.
    pub fn full_refund(requester: UserId, origin_channel: &str, target: PaymentRef, reason: RefundReason) -> Self {
        NewRequest {
            requester,
            origin_channel: origin_channel.to_string(),
            target,
            amount: AmountAsked::Full,
            reason,
            note: None,
            customer_email: None,
            response_url: None,
            api: None,
        }
    }
}

/// A refund request and everything known about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub id: RequestId,
    pub requester: UserId,
    pub origin_channel: String,
    pub target: PaymentRef,
    pub asked: AmountAsked,
    pub reason: RefundReason,
    pub note: Option<Note>,
    /// Where customer emails go, when the requester named an address.
    #[serde(default)]
    pub customer_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: RequestStatus,
    /// Set once Stripe has been asked about the charge.
    pub charge: Option<ChargeFacts>,
    /// The amount to refund, in the charge's currency; set with `charge`.
    pub amount: Option<Money>,
    /// The approval that completed the request's approvals.
    pub approved: Option<Decision>,
    /// Every approval given, in order (two where the policy asks for two).
    #[serde(default)]
    pub approvals: Vec<Decision>,
    #[serde(default = "one")]
    pub required_approvals: u8,
    /// What the policy decided, and why.
    #[serde(default)]
    pub policy: Option<PolicyDecision>,
    /// Refunded by the policy, without a click.
    #[serde(default)]
    pub auto_approved: bool,
    pub denied: Option<Decision>,
    pub deny_reason: Option<String>,
    pub card: Option<MessageRef>,
    pub refund: Option<RefundRecord>,
    /// Why the request was rejected or failed, in words for people.
    pub problem: Option<String>,
    /// When it started waiting for approval.
    #[serde(default)]
    pub awaiting_since: Option<DateTime<Utc>>,
    /// When approvers were reminded, if they were.
    #[serde(default)]
    pub reminded_at: Option<DateTime<Utc>>,
    /// When the escalation approvers were called in, if they were.
    #[serde(default)]
    pub escalated_at: Option<DateTime<Utc>>,
    /// When the requester last pressed Remind approvers.
    #[serde(default)]
    pub nudged_at: Option<DateTime<Utc>>,
    /// The direct message telling the requester their request is with finance.
    #[serde(default)]
    pub requester_message: Option<MessageRef>,
    /// The command's `response_url`: a refusal replaces the "Got it" answer there.
    #[serde(default)]
    pub response_url: Option<String>,
    /// The API client that made the request, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiOrigin>,
}

fn one() -> u8 {
    1
}

/// Someone or something that moved a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    User(UserId),
    Stripe,
    /// The refund policy (auto-approval).
    Policy,
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(u) => write!(f, "{u}"),
            Actor::Stripe => f.write_str("stripe"),
            Actor::Policy => f.write_str("policy"),
            Actor::System => f.write_str("refund-desk"),
        }
    }
}

/// Something to tell people, in the card's thread or privately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    Rejected,
    /// One approval of two.
    ApprovalRecorded,
    Approved,
    AutoApproved,
    Denied,
    Submitted,
    StripeStatus(RequestStatus),
    CustomerEmailed {
        to: String,
        #[serde(default)]
        kind: EmailKind,
        #[serde(default)]
        at: Option<DateTime<Utc>>,
    },
    CustomerNotEmailed {
        why: String,
    },
    Withdrawn,
    /// A refund was made on the request's payment outside the desk.
    OutsideRefund {
        refund: RefundId,
        amount: Option<Money>,
        status: String,
    },
    /// Approvers are reminded that the request still waits.
    Reminder {
        approvers: Vec<UserId>,
    },
    /// The requester pressed Remind approvers.
    Nudge {
        approvers: Vec<UserId>,
    },
    /// The escalation approvers are called in.
    Escalated {
        approvers: Vec<UserId>,
    },
    /// To the requester: the request is with finance (with a Remind approvers button).
    WithFinance,
    Expired,
}

/// Kinds of email sent to the customer; at most one of each per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    #[default]
    RefundSucceeded,
    RequestDenied,
    RefundFailed,
}

impl EmailKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            EmailKind::RefundSucceeded => "refund_succeeded",
            EmailKind::RequestDenied => "request_denied",
            EmailKind::RefundFailed => "refund_failed",
        }
    }

    /// The kind [`EmailKind::as_str`] names.
    pub fn parse(name: &str) -> Option<EmailKind> {
        [EmailKind::RefundSucceeded, EmailKind::RequestDenied, EmailKind::RefundFailed]
            .into_iter()
            .find(|k| k.as_str() == name)
    }
}

/// A side effect a transition causes; each becomes a durable job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// Read the charge or payment intent at Stripe and decide whether it can be refunded.
    CheckPayment,
    PostCard,
    /// Edit the card to show the current state.
    RefreshCard,
    ThreadReply(Notice),
    NotifyRequester(Notice),
    /// `POST /v1/refunds` with the request's idempotency key.
    CreateRefund,
    /// Read the refund back from Stripe if no webhook settled it in time.
    CheckRefund,
    /// Remind approvers, and later expire the request, if it waits too long (policy).
    Deadline,
    /// Republish App Home for the people this request shows to.
    RefreshHomes,
    /// Edit the requester's "with finance" message to show where the request stands.
    RefreshRequesterMessage,
    /// Read the charge again (a refund was made on it outside the desk) and show what remains.
    RecheckCharge,
    /// Tell finance that the Stripe key lacks a permission the desk cannot work without
    /// (`what` it could not do, in words).
    AlertKeyPermission {
        permission: Option<String>,
        what: String,
    },
    /// Tell finance that a job ran out of attempts and waits for a person.
    ReportParked {
        job_id: u64,
        what: String,
        error: String,
    },
    EmailCustomer(EmailKind),
    /// Post a status change of an API-made request to its client's callback URL.
    Callback(StatusChange),
}

/// Effects of one request run in order within a lane; lanes do not wait on each other, so a
/// Slack outage never holds back a refund, nor a slow Stripe a card edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    Stripe = 1,
    Slack = 2,
    Email = 3,
    /// Alerts about other jobs; never queued behind the job they report.
    Alerts = 4,
    /// Reminders and expiry, which wait for hours.
    Timers = 5,
    /// App Home updates.
    Home = 6,
    /// Direct messages to the requester: never held up behind a card that cannot be posted.
    Requester = 7,
    /// Status changes posted to an API client, in order: a receiver that is down holds up
    /// only its own deliveries.
    Callback = 8,
}

impl Lane {
    pub const ALL: [Lane; 8] = [
        Lane::Stripe,
        Lane::Slack,
        Lane::Email,
        Lane::Alerts,
        Lane::Timers,
        Lane::Home,
        Lane::Requester,
        Lane::Callback,
    ];
}

impl Effect {
    pub fn lane(&self) -> Lane {
        match self {
            Effect::CheckPayment | Effect::CreateRefund | Effect::CheckRefund | Effect::RecheckCharge => Lane::Stripe,
            Effect::PostCard | Effect::RefreshCard | Effect::ThreadReply(_) => Lane::Slack,
            Effect::NotifyRequester(_) | Effect::RefreshRequesterMessage => Lane::Requester,
            Effect::EmailCustomer(_) => Lane::Email,
            Effect::ReportParked { .. } | Effect::AlertKeyPermission { .. } => Lane::Alerts,
            Effect::Deadline => Lane::Timers,
            Effect::RefreshHomes => Lane::Home,
            Effect::Callback(_) => Lane::Callback,
        }
    }
}

/// The outcome of a successful transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub actor: Actor,
    pub from: RequestStatus,
    pub effects: Vec<Effect>,
    /// Detail for the audit trail.
    pub detail: Option<String>,
}

impl Transition {
    /// The jobs a transition leaves: its effects; whatever changed, App Home's refresh for the
    /// people who see the request there; and with the card, the requester's message, which
    /// shows the same state (in the requester's own lane, so neither holds the other up); and
    /// when the status of a request made through the API changed, its client's callback.
    pub fn jobs(&self, request: &RefundRequest, now: DateTime<Utc>) -> Vec<Effect> {
        let mut effects = self.effects.clone();
        if request.status != self.from && request.api.as_ref().is_some_and(|api| api.callbacks) {
            effects.push(Effect::Callback(StatusChange {
                from: self.from,
                to: request.status,
                at: now,
                amount: request.amount,
                refund_id: request.refund.as_ref().map(|r| r.id.clone()),
            }));
        }
        if effects.contains(&Effect::RefreshCard) && !effects.contains(&Effect::RefreshRequesterMessage) {
            effects.push(Effect::RefreshRequesterMessage);
        }
        if !effects.contains(&Effect::RefreshHomes) {
            effects.push(Effect::RefreshHomes);
        }
        effects
    }
}

/// A transition that does not apply to the request's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{id} is {status:?}, so it cannot be {action}")]
pub struct StateError {
    pub id: RequestId,
    pub status: RequestStatus,
    pub action: &'static str,
}

impl RefundRequest {
    pub fn new(id: RequestId, new: NewRequest, now: DateTime<Utc>) -> Self {
        RefundRequest {
            id,
            requester: new.requester,
            origin_channel: new.origin_channel,
            target: new.target,
            asked: new.amount,
            reason: new.reason,
            note: new.note,
            customer_email: new.customer_email,
            created_at: now,
            updated_at: now,
            status: RequestStatus::Requested,
            charge: None,
            amount: None,
            approved: None,
            approvals: vec![],
            required_approvals: 1,
            policy: None,
            auto_approved: false,
            denied: None,
            deny_reason: None,
            card: None,
            refund: None,
            problem: None,
            awaiting_since: None,
            reminded_at: None,
            escalated_at: None,
            nudged_at: None,
            requester_message: None,
            response_url: new.response_url,
            api: new.api,
        }
    }

    /// The transition that stores a new request: check the payment next.
    pub fn created(&self) -> Transition {
        Transition {
            actor: Actor::User(self.requester.clone()),
            from: RequestStatus::Requested,
            effects: vec![Effect::CheckPayment],
            // The channel it came through: an API client by its token's name.
            detail: Some(match &self.api {
                Some(api) => {
                    format!("asked for {} on {} through the API as {}", self.asked_text(), self.target, api.client)
                }
                None => format!("asked for {} on {}", self.asked_text(), self.target),
            }),
        }
    }

    pub fn asked_text(&self) -> String {
        match &self.asked {
            AmountAsked::Full => "the full remaining amount".to_string(),
            AmountAsked::Exact(a) => a.text().to_string(),
        }
    }

    pub(super) fn expect(&self, status: RequestStatus, action: &'static str) -> Result<(), StateError> {
        if self.status == status { Ok(()) } else { Err(StateError { id: self.id, status: self.status, action }) }
    }

    pub(super) fn move_to(&mut self, to: RequestStatus, now: DateTime<Utc>) -> RequestStatus {
        let from = self.status;
        self.status = to;
        self.updated_at = now;
        from
    }

    /// Stripe confirmed the charge can be refunded as asked, and the policy decided how: post
    /// the card for approval, or refund at once and post the card as a notice.
    pub fn accept(
        &mut self,
        facts: ChargeFacts,
        amount: Money,
        decision: PolicyDecision,
        now: DateTime<Utc>,
    ) -> Result<Transition, StateError> {
        self.expect(RequestStatus::Requested, "sent for approval")?;
        let route = decision.route;
        if route == Route::Refuse {
            return self.reject(decision.rule, Some(facts), now);
        }
        self.charge = Some(facts);
        self.amount = Some(amount);
        let detail = Some(format!("{amount}: {}", decision.rule));
        self.policy = Some(decision);
        if route == Route::AutoApprove {
            self.auto_approved = true;
            let from = self.move_to(RequestStatus::Approved, now);
            return Ok(Transition {
                actor: Actor::Policy,
                from,
                effects: vec![Effect::CreateRefund, Effect::PostCard, Effect::ThreadReply(Notice::AutoApproved)],
                detail,
            });
        }
        if let Route::Approvals(n) = route {
            self.required_approvals = n.max(1);
        }
        self.awaiting_since = Some(now);
        let from = self.move_to(RequestStatus::AwaitingApproval, now);
        let effects = vec![Effect::PostCard, Effect::Deadline, Effect::NotifyRequester(Notice::WithFinance)];
        Ok(Transition { actor: Actor::System, from, effects, detail })
    }

    /// The charge cannot be refunded as asked: end the request and say why.
    pub fn reject(
        &mut self,
        why: String,
        facts: Option<ChargeFacts>,
        now: DateTime<Utc>,
    ) -> Result<Transition, StateError> {
        self.expect(RequestStatus::Requested, "rejected")?;
        self.charge = facts.or(self.charge.take());
        self.problem = Some(why.clone());
        let from = self.move_to(RequestStatus::Rejected, now);
        Ok(Transition {
            actor: Actor::System,
            from,
            effects: vec![Effect::NotifyRequester(Notice::Rejected)],
            detail: Some(why),
        })
    }

    /// Nobody decided in time: the request expires.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Result<Transition, StateError> {
        self.expect(RequestStatus::AwaitingApproval, "expired")?;
        let from = self.move_to(RequestStatus::Expired, now);
        Ok(Transition {
            actor: Actor::System,
            from,
            effects: vec![
                Effect::RefreshCard,
                Effect::ThreadReply(Notice::Expired),
                Effect::NotifyRequester(Notice::Expired),
            ],
            detail: Some("no decision in time".into()),
        })
    }

    /// Stripe answered the refund call with a refund object.
    pub fn record_submitted(
        &mut self,
        refund: RefundId,
        stripe_status: &str,
        now: DateTime<Utc>,
    ) -> Result<Transition, StateError> {
        if self.status.refund_rank().is_none() {
            return Err(StateError { id: self.id, status: self.status, action: "submitted to Stripe" });
        }
        if self.refund.is_none() {
            self.refund =
                Some(RefundRecord { id: refund, stripe_status: stripe_status.to_string(), failure_reason: None });
        }
        let mut effects = vec![];
        let from = self.status;
        // A webhook may have been faster than Stripe's answer to our call; then it already
        // moved the request on and told the thread.
        if self.status == RequestStatus::Approved {
            self.move_to(RequestStatus::Submitted, now);
            effects = vec![Effect::ThreadReply(Notice::Submitted), Effect::RefreshCard, Effect::CheckRefund];
        }
        Ok(Transition { actor: Actor::Stripe, from, effects, detail: Some(format!("stripe status {stripe_status}")) })
    }

    /// Stripe refused the refund call outright (already refunded, disputed, ...).
    pub fn fail_submission(&mut self, why: String, now: DateTime<Utc>) -> Result<Transition, StateError> {
        self.expect(RequestStatus::Approved, "failed at submission")?;
        self.problem = Some(why.clone());
        let from = self.move_to(RequestStatus::Failed, now);
        Ok(Transition {
            actor: Actor::Stripe,
            from,
            effects: vec![
                Effect::RefreshCard,
                Effect::ThreadReply(Notice::StripeStatus(RequestStatus::Failed)),
                Effect::NotifyRequester(Notice::StripeStatus(RequestStatus::Failed)),
            ],
            detail: Some(why),
        })
    }

    /// Whether `update`, a refund no refund id was recorded for, is this request's: only a refund
    /// that names this installation and this request in its metadata, on this request's own
    /// charge or payment intent, while no other refund is recorded for it. The metadata alone
    /// proves nothing: every store numbers from R-1001, and anyone can write metadata (another
    /// installation on the same account, a store restored from a backup, a refund made by hand).
    pub fn may_claim(&self, update: &RefundUpdate, install_id: &str) -> bool {
        if update.install.as_deref() != Some(install_id) || update.request_hint != Some(self.id) {
            return false;
        }
        if self.refund.as_ref().is_some_and(|r| r.id != update.refund) {
            return false;
        }
        let on_charge = |c: &ChargeId| update.charge.as_ref() == Some(c);
        let facts_charge = self.charge.as_ref().is_some_and(|f| on_charge(&f.charge));
        match &self.target {
            PaymentRef::Charge(c) => on_charge(c),
            PaymentRef::PaymentIntent(p) => update.payment_intent.as_ref() == Some(p) || facts_charge,
        }
    }

    /// Whether a refund found on the request's own charge, before making one, is the one an
    /// earlier try made: one it [may claim](RefundRequest::may_claim), or one as versions before
    /// `refund_desk_install` made them: naming this request, no installation, and exactly the
    /// request's amount. Missing such a refund would refund twice.
    pub fn may_recover(&self, update: &RefundUpdate, install_id: &str) -> bool {
        if self.may_claim(update, install_id) {
            return true;
        }
        let legacy = RefundUpdate { install: Some(install_id.to_string()), ..update.clone() };
        update.install.is_none()
            && update.amount.is_some()
            && update.amount == self.amount
            && self.may_claim(&legacy, install_id)
    }

    /// The money this request holds against its charge: from the card until Stripe's final
    /// answer, so two requests on one charge cannot both count on the same money. `None` once
    /// it ended, or before its amount is known.
    pub fn hold(&self) -> Option<crate::domain::policy::Hold> {
        let holds = matches!(
            self.status,
            RequestStatus::AwaitingApproval
                | RequestStatus::Approved
                | RequestStatus::Submitted
                | RequestStatus::Pending
        );
        let amount = self.amount.filter(|_| holds && self.charge.is_some())?;
        Some(crate::domain::policy::Hold {
            request: self.id,
            amount,
            refund: self.refund.as_ref().map(|r| r.id.clone()),
        })
    }

    /// What Stripe reports about this request's refund (from a webhook). Moves only forward;
    /// returns `None` when it changes nothing.
    pub fn record_stripe_refund(
        &mut self,
        refund: RefundId,
        stripe_status: &str,
        failure_reason: Option<String>,
        now: DateTime<Utc>,
    ) -> Option<Transition> {
        let current = self.status.refund_rank()?;
        if let Some(r) = &self.refund
            && r.id != refund
        {
            // Another refund on the same charge, not ours.
            return None;
        }
        let to = RequestStatus::from_stripe_refund_status(stripe_status)?;
        let target = to.refund_rank()?;
        if target <= current {
            if self.refund.is_none() {
                self.refund =
                    Some(RefundRecord { id: refund, stripe_status: stripe_status.to_string(), failure_reason });
                self.updated_at = now;
            }
            return None;
        }
        self.refund = Some(RefundRecord {
            id: refund,
            stripe_status: stripe_status.to_string(),
            failure_reason: failure_reason.clone(),
        });
        if to == RequestStatus::Failed {
            self.problem = failure_reason.clone().or_else(|| Some("Stripe reported the refund failed".into()));
        }
        let from = self.move_to(to, now);
        let mut effects = vec![Effect::RefreshCard, Effect::ThreadReply(Notice::StripeStatus(to))];
        match to {
            RequestStatus::Succeeded => {
                effects.push(Effect::NotifyRequester(Notice::StripeStatus(to)));
                effects.push(Effect::EmailCustomer(EmailKind::RefundSucceeded));
            }
            RequestStatus::Failed => {
                effects.push(Effect::NotifyRequester(Notice::StripeStatus(to)));
                effects.push(Effect::EmailCustomer(EmailKind::RefundFailed));
            }
            RequestStatus::Canceled => {
                effects.push(Effect::NotifyRequester(Notice::StripeStatus(to)));
            }
            _ => {}
        }
        Some(Transition { actor: Actor::Stripe, from, effects, detail: Some(format!("stripe status {stripe_status}")) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::money::Currency;
    use crate::domain::{Approvers, Authority, DecisionError};

    pub(crate) fn user(u: &str) -> UserId {
        UserId::parse(u).unwrap()
    }

    /// Request 1: a full refund of $25.00 on `ch_1`, checked and awaiting approval.
    pub(crate) fn waiting() -> RefundRequest {
        let now = Utc::now();
        let mut r = RefundRequest::new(
            RequestId::new(1),
            NewRequest::full_refund(user("UREQ"), "C1", PaymentRef::parse("ch_1").unwrap(), RefundReason::Duplicate),
            now,
        );
        let usd = Currency::parse("usd").unwrap();
        r.accept(charge_facts("ch_1", 2500), Money::new(2500, usd), one_approval(), now).unwrap();
        r
    }

    /// What Stripe says of an unrefunded USD charge of `amount` cents.
    pub(crate) fn charge_facts(charge: &str, amount: u64) -> ChargeFacts {
        let now = Utc::now();
        let usd = Currency::parse("usd").unwrap();
        ChargeFacts {
            charge: ChargeId::parse(charge).unwrap(),
            payment_intent: None,
            amount: Money::new(amount, usd),
            amount_refunded: Money::new(0, usd),
            created: now,
            customer_email: None,
            customer_name: None,
            card: None,
            refunds: None,
            fraud_warnings: vec![],
            disputes: vec![],
            unreadable: vec![],
        }
    }

    pub(crate) fn one_approval() -> PolicyDecision {
        PolicyDecision::new(Route::Approvals(1), "One approval")
    }

    pub(crate) fn approvers() -> Authority {
        Authority::of(Approvers::new([user("UFIN"), user("UREQ")]))
    }

    #[test]
    fn approval_sends_the_refund_and_tells_the_thread() {
        let mut r = waiting();
        let t = r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::Approved);
        assert_eq!(t.from, RequestStatus::AwaitingApproval);
        assert!(t.effects.contains(&Effect::CreateRefund));
        assert!(t.effects.contains(&Effect::RefreshCard));
    }

    #[test]
    fn the_requester_cannot_approve_even_as_an_approver() {
        let mut r = waiting();
        let before = r.clone();
        assert_eq!(
            r.approve(&user("UREQ"), &approvers(), &crate::domain::Approval::default(), Utc::now()),
            Err(DecisionError::OwnRequest(r.id))
        );
        assert_eq!(r, before);
    }

    #[test]
    fn non_approvers_cannot_decide() {
        let mut r = waiting();
        let err =
            r.approve(&user("UOTHER"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap_err();
        assert_eq!(err, DecisionError::NotAnApprover(r.id));
        let err = r.deny(&user("UOTHER"), "no", &approvers(), Utc::now()).unwrap_err();
        assert_eq!(err, DecisionError::NotAnApprover(r.id));
        assert_eq!(r.status, RequestStatus::AwaitingApproval);
    }

    #[test]
    fn a_second_decision_changes_nothing() {
        let mut r = waiting();
        r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap();
        let err = r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap_err();
        assert!(matches!(err, DecisionError::AlreadyDecided { .. }));
        assert!(r.deny(&user("UFIN"), "late", &approvers(), Utc::now()).is_err());
        assert_eq!(r.status, RequestStatus::Approved);
    }

    #[test]
    fn denial_needs_a_reason() {
        let mut r = waiting();
        assert_eq!(r.deny(&user("UFIN"), "  ", &approvers(), Utc::now()), Err(DecisionError::EmptyReason));
        let t = r.deny(&user("UFIN"), "outside policy", &approvers(), Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::Denied);
        assert!(!t.effects.contains(&Effect::CreateRefund));
    }

    #[test]
    fn stripe_statuses_only_move_forward() {
        let mut r = waiting();
        r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap();
        let re = RefundId::parse("re_1").unwrap();
        let t = r.record_stripe_refund(re.clone(), "succeeded", None, Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::Succeeded);
        assert!(t.effects.contains(&Effect::EmailCustomer(EmailKind::RefundSucceeded)));
        assert_eq!(r.record_stripe_refund(re.clone(), "pending", None, Utc::now()), None);
        assert_eq!(r.status, RequestStatus::Succeeded);
        // Stripe's answer to our own call, arriving after the webhook, does not move it back.
        let t = r.record_submitted(re.clone(), "pending", Utc::now()).unwrap();
        assert!(t.effects.is_empty());
        assert_eq!(r.status, RequestStatus::Succeeded);
        // A refund that succeeded may still fail later.
        let t = r.record_stripe_refund(re, "failed", Some("expired_or_canceled_card".into()), Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::Failed);
        assert!(!t.effects.contains(&Effect::EmailCustomer(EmailKind::RefundSucceeded)), "no second success email");
    }

    #[test]
    fn events_for_another_refund_are_ignored() {
        let mut r = waiting();
        r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap();
        r.record_submitted(RefundId::parse("re_ours").unwrap(), "pending", Utc::now()).unwrap();
        assert_eq!(r.record_stripe_refund(RefundId::parse("re_other").unwrap(), "succeeded", None, Utc::now()), None);
        assert_eq!(r.status, RequestStatus::Submitted);
    }

    #[test]
    fn stripe_events_cannot_move_a_request_that_was_never_approved() {
        let mut r = waiting();
        assert_eq!(r.record_stripe_refund(RefundId::parse("re_1").unwrap(), "succeeded", None, Utc::now()), None);
        assert_eq!(r.status, RequestStatus::AwaitingApproval);
    }

    #[test]
    fn two_approvals_need_two_different_approvers() {
        let mut r = waiting();
        r.required_approvals = 2;
        let approvers = Authority::of(Approvers::new([user("UFIN"), user("UFIN2")]));
        let t = r.approve(&user("UFIN"), &approvers, &crate::domain::Approval::default(), Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::AwaitingApproval);
        assert!(!t.effects.contains(&Effect::CreateRefund));
        assert_eq!(
            r.approve(&user("UFIN"), &approvers, &crate::domain::Approval::default(), Utc::now()),
            Err(DecisionError::AlreadyApprovedByYou(r.id))
        );
        let t = r.approve(&user("UFIN2"), &approvers, &crate::domain::Approval::default(), Utc::now()).unwrap();
        assert_eq!(r.status, RequestStatus::Approved);
        assert!(t.effects.contains(&Effect::CreateRefund));
        assert_eq!(r.approvals.len(), 2);
    }

    #[test]
    fn auto_approval_refunds_at_once_with_the_policy_as_actor() {
        let now = Utc::now();
        let mut r = waiting();
        r.status = RequestStatus::Requested;
        let facts = r.charge.clone().unwrap();
        let auto = PolicyDecision::new(Route::AutoApprove, "Auto-approved");
        let t = r.accept(facts.clone(), facts.amount, auto, now).unwrap();
        assert_eq!((r.status, t.actor), (RequestStatus::Approved, Actor::Policy));
        assert!(r.auto_approved && t.effects.contains(&Effect::CreateRefund) && t.effects.contains(&Effect::PostCard));
        let mut r2 = waiting();
        r2.status = RequestStatus::Requested;
        let refuse = PolicyDecision::new(Route::Refuse, "above the cap");
        r2.accept(facts.clone(), facts.amount, refuse, now).unwrap();
        assert_eq!(r2.status, RequestStatus::Rejected);
    }

    fn update(refund: &str, charge: &str, install: Option<&str>, request: Option<RequestId>) -> RefundUpdate {
        RefundUpdate {
            refund: RefundId::parse(refund).unwrap(),
            status: "succeeded".into(),
            failure_reason: None,
            request_hint: request,
            install: install.map(str::to_string),
            charge: ChargeId::parse(charge).ok(),
            payment_intent: None,
            amount: None,
        }
    }

    #[test]
    fn a_request_claims_only_a_refund_naming_this_installation_and_it_on_its_own_charge() {
        let r = waiting();
        let me = Some(r.id);
        assert!(r.may_claim(&update("re_1", "ch_1", Some("inst"), me), "inst"));
        assert!(!r.may_claim(&update("re_1", "ch_2", Some("inst"), me), "inst"), "another charge");
        assert!(!r.may_claim(&update("re_1", "ch_1", None, me), "inst"), "no installation named");
        assert!(!r.may_claim(&update("re_1", "ch_1", Some("other"), me), "inst"), "another installation");
        assert!(
            !r.may_claim(&update("re_1", "ch_1", Some("inst"), Some(RequestId::new(2))), "inst"),
            "another request"
        );
        let mut with_refund = r.clone();
        with_refund.refund = Some(RefundRecord {
            id: RefundId::parse("re_0").unwrap(),
            stripe_status: "pending".into(),
            failure_reason: None,
        });
        assert!(!with_refund.may_claim(&update("re_1", "ch_1", Some("inst"), me), "inst"), "one refund is recorded");
    }

    #[test]
    fn a_recorded_refund_id_decides_whatever_the_metadata_says() {
        let r = waiting();
        let foreign = update("re_9", "ch_2", None, None);
        assert_eq!(owner_of_refund(Some(RequestId::new(7)), None, &foreign, "inst"), Some(RequestId::new(7)));
        assert_eq!(owner_of_refund(None, Some(&r), &foreign, "inst"), None);
        assert_eq!(
            owner_of_refund(None, Some(&r), &update("re_9", "ch_1", Some("inst"), Some(r.id)), "inst"),
            Some(r.id)
        );
    }

    #[test]
    fn a_refund_an_older_version_made_without_an_installation_is_recovered_but_never_another_installations() {
        let r = waiting();
        let legacy = RefundUpdate { amount: r.amount, ..update("re_1", "ch_1", None, Some(r.id)) };
        assert!(r.may_recover(&legacy, "inst"), "made before refund_desk_install, for the amount asked");
        let other_amount =
            RefundUpdate { amount: Some(Money::new(100, r.amount.unwrap().currency())), ..legacy.clone() };
        assert!(!r.may_recover(&other_amount, "inst"), "a hand-made refund that only names the request");
        assert!(r.may_recover(&update("re_1", "ch_1", Some("inst"), Some(r.id)), "inst"));
        assert!(!r.may_recover(&update("re_1", "ch_1", Some("other"), Some(r.id)), "inst"));
        let elsewhere = RefundUpdate { amount: r.amount, ..update("re_1", "ch_2", None, Some(r.id)) };
        assert!(!r.may_recover(&elsewhere, "inst"), "another charge");
        assert!(!r.may_claim(&update("re_1", "ch_1", None, Some(r.id)), "inst"), "settling still needs the install id");
    }
}
