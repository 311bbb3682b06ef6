//! Block Kit views: the approval card, thread replies and direct messages, the deny form.
//! Each is a function of the stored request; no handler writes Slack JSON inline.

use crate::domain::{Notice, RefundRequest, RequestId, RequestStatus, capitalised};
use chrono::{DateTime, Utc};
use slack_morphism::prelude::*;

pub const APPROVE_ACTION: &str = "refund_approve";
pub const DENY_ACTION: &str = "refund_deny";
pub const DENY_CALLBACK: &str = "refund_deny_modal";
pub const DENY_REASON_BLOCK: &str = "deny_reason_block";
pub const DENY_REASON_ACTION: &str = "deny_reason";
/// The requester's Remind approvers button (direct message and App Home).
pub const REMIND_ACTION: &str = "refund_remind";
/// The approval form, when approving asks for a note or the typed amount.
pub const APPROVE_CALLBACK: &str = "refund_approve_modal";
pub const APPROVE_NOTE_BLOCK: &str = "approve_note_block";
pub const APPROVE_AMOUNT_BLOCK: &str = "approve_amount_block";

/// A time that each reader sees in their own time zone, with a UTC fallback.
pub fn slack_time(at: DateTime<Utc>) -> String {
    format!("<!date^{}^{{date_short_pretty}} at {{time}}|{}>", at.timestamp(), at.format("%Y-%m-%d %H:%M UTC"))
}

fn mention(user: &impl std::fmt::Display) -> String {
    format!("<@{user}>")
}

/// Slack mrkdwn treats `&`, `<` and `>` as control characters; text people typed is escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The amount in words, known once Stripe has been read.
fn amount_text(r: &RefundRequest) -> String {
    match &r.amount {
        Some(m) => m.to_string(),
        None => r.asked_text(),
    }
}

/// Who decided and where the refund stands, one line.
pub fn status_line(r: &RefundRequest) -> String {
    let refund = r.refund.as_ref().map(|f| format!(" · Stripe refund `{}`", f.id)).unwrap_or_default();
    let decision = match (&r.approved, &r.denied) {
        _ if r.auto_approved => "Approved by the refund policy, without a click".to_string(),
        (Some(_), _) if r.approvals.len() > 1 => format!("Approved by {}", approvers_text(r)),
        (Some(d), _) => format!("Approved by {} {}{}", d.who(), slack_time(d.at), note_text(d)),
        (None, None) if !r.approvals.is_empty() => {
            format!("{} of {} approvals: {}", r.approvals.len(), r.required_approvals, approvers_text(r))
        }
        (None, Some(d)) => {
            format!("Denied by {} {}: {}", d.who(), slack_time(d.at), escape(r.deny_reason.as_deref().unwrap_or("")))
        }
        _ => String::new(),
    };
    let problem = match (&r.problem, r.status) {
        (Some(p), RequestStatus::Failed | RequestStatus::Rejected) => format!(" · {}", escape(p)),
        _ => String::new(),
    };
    let sep = if decision.is_empty() { "" } else { " · " };
    format!("*Status:* {}{sep}{decision}{refund}{problem}", r.status)
}

/// Everyone who approved, with when (and on whose behalf, and their note).
fn approvers_text(r: &RefundRequest) -> String {
    r.approvals
        .iter()
        .map(|d| format!("{} {}{}", d.who(), slack_time(d.at), note_text(d)))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// An approver's note, quoted, or nothing.
fn note_text(d: &crate::domain::Decision) -> String {
    d.note.as_deref().map(|n| format!(" (note: \u{201c}{}\u{201d})", escape(n))).unwrap_or_default()
}

/// What approving asks for, and who may approve, in words for the card.
fn approval_asks(r: &RefundRequest) -> Vec<String> {
    let mut lines = vec![];
    if let (Some(from), true) = (r.senior_from(), r.status == RequestStatus::AwaitingApproval) {
        let given = r.approvals.iter().any(|a| a.senior);
        lines.push(if given {
            format!(":medal: At or above {from}: the senior approval is given.")
        } else {
            format!(":medal: At or above {from}: one approval must come from a senior approver.")
        });
    }
    if r.status == RequestStatus::AwaitingApproval {
        let asks: Vec<&str> = [
            r.policy.as_ref().is_some_and(|p| p.confirm_amount).then_some("the amount typed"),
            r.policy.as_ref().is_some_and(|p| p.note_required).then_some("a note"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !asks.is_empty() {
            lines.push(format!(":memo: Approving asks for {}.", asks.join(" and ")));
        }
    }
    if let Some(at) = r.escalated_at {
        lines.push(format!(
            ":rotating_light: Escalated {}: the escalation approvers may decide it too.",
            slack_time(at)
        ));
    }
    lines
}

/// Refunds Stripe already had on the charge, and which request made each.
fn history_text(c: &crate::domain::ChargeFacts) -> Option<String> {
    let refunds = c.refunds.as_ref()?;
    if refunds.is_empty() {
        return None;
    }
    let lines: Vec<String> = refunds
        .iter()
        .map(|p| {
            let by = p.request.map(|id| id.to_string()).unwrap_or_else(|| "made outside refund-desk".into());
            format!("{} `{}` ({by}, {})", p.amount, p.id, p.status)
        })
        .collect();
    Some(format!("*Refunded before*\n{}", lines.join("\n")))
}

/// How many other requests on the same payment a card or an answer lists (the newest).
pub const OTHERS_SHOWN: usize = 10;

/// The other requests on the same payment, one line each, for the card; `more` older ones are
/// counted, not listed.
fn others_text(others: &[RefundRequest], more: usize) -> Option<String> {
    if others.is_empty() {
        return None;
    }
    let mut lines: Vec<String> = others
        .iter()
        .map(|o| format!("{} · {} · by {} · {}", o.id, amount_text(o), mention(&o.requester), o.status.label()))
        .collect();
    if more > 0 {
        lines.insert(0, format!("… and {more} older"));
    }
    let open = others.iter().filter(|o| o.status.is_open()).count();
    let head = if open > 0 {
        format!(":warning: *Other requests on this payment* ({open} still open: approving both may refund twice)")
    } else {
        "*Other requests on this payment*".to_string()
    };
    Some(format!("{head}\n{}", lines.join("\n")))
}

/// What the requester reads when others already asked about the same payment.
pub fn others_notice(others: &[RefundRequest]) -> Option<String> {
    let lines: Vec<String> = others
        .iter()
        .map(|o| {
            let what = if o.status.is_open() { "is already" } else { "was" };
            format!(
                ":warning: {} for {} (asked by {}) {what} on this payment: {}.",
                o.id,
                amount_text(o),
                mention(&o.requester),
                o.status.label().to_lowercase()
            )
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The approval card in the finance channel, with the other requests on the same payment.
/// Buttons only while the request waits.
pub fn approval_card(
    r: &RefundRequest,
    (others, more): (&[RefundRequest], usize),
    now: DateTime<Utc>,
) -> SlackMessageContent {
    let mut fields = vec![
        md!("*Requested by*\n{}", mention(&r.requester)),
        md!("*Amount*\n{}", amount_text(r)),
        md!("*Payment*\n`{}`", r.target),
        md!("*Reason*\n{}", r.reason.label()),
    ];
    if let Some(c) = &r.charge {
        let age_days = (now - c.created).num_days();
        fields.push(md!(
            "*Customer*\n{}",
            c.customer_email.as_deref().map(escape).unwrap_or_else(|| "no email on file".into())
        ));
        fields.push(md!("*Charged*\n{} ({} days ago)", slack_time(c.created), age_days));
        fields.push(md!("*Refundable*\n{} of {}", c.remaining(), c.amount));
        if let Some(card) = &c.card {
            fields.push(md!("*Card*\n{} •••• {}", escape(&capitalised(&card.brand)), escape(&card.last4)));
        }
    }
    let mut blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(if r.auto_approved {
            pt!("Refund request {} (auto-approved)", r.id)
        } else {
            pt!("Refund request {}", r.id)
        })
        .into(),
        SlackSectionBlock::new().with_fields(fields).into(),
    ];
    if let Some(policy) = &r.policy {
        let mut text = format!("*Policy:* {}", escape(&policy.rule));
        if r.required_approvals > 1 && r.status == RequestStatus::AwaitingApproval {
            text.push_str(&format!(" ({} of {} approvals so far)", r.approvals.len(), r.required_approvals));
        }
        for warning in &policy.warnings {
            text.push_str(&format!("\n:warning: {}", escape(warning)));
        }
        for line in approval_asks(r) {
            text.push_str(&format!("\n{line}"));
        }
        blocks.push(SlackSectionBlock::new().with_text(md!("{}", text)).into());
    }
    // What Stripe now says remains, when a refund made outside the desk took some of it.
    if let (Some(c), Some(amount)) = (&r.charge, r.amount)
        && r.status.is_open()
        && amount.minor() > c.remaining().minor()
    {
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!(
                    ":warning: {amount} is more than the {} that remains on this charge now: Stripe would refuse it.",
                    c.remaining()
                ))
                .into(),
        );
    }
    if let Some(history) = r.charge.as_ref().and_then(history_text) {
        blocks.push(SlackSectionBlock::new().with_text(md!("{}", history)).into());
    }
    if let Some(text) = others_text(others, more) {
        blocks.push(SlackSectionBlock::new().with_text(md!("{}", text)).into());
    }
    if let Some(note) = &r.note {
        blocks.push(SlackSectionBlock::new().with_text(md!("*Note*\n{}", escape(note.as_str()))).into());
    }
    blocks.push(
        SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(status_line(r)))])
            .into(),
    );
    if r.status == RequestStatus::AwaitingApproval {
        blocks.push(decision_buttons(r));
    }
    SlackMessageContent::new()
        .with_text(format!("Refund request {} for {}: {}", r.id, amount_text(r), r.status))
        .with_blocks(blocks)
}

/// Approve (with a confirmation, or a form when approving asks for more) and Deny, carrying the
/// request id; on the card and in App Home.
fn decision_buttons(r: &RefundRequest) -> SlackBlock {
    let value = r.id.to_string();
    let mut approve = SlackBlockButtonElement::new(pt!("Approve"))
        .with_action_id(APPROVE_ACTION.into())
        .with_value(value.clone())
        .with_style(SlackBlockButtonStyle::Primary);
    // The form is the confirmation where there is one.
    if !r.approval_needs_form() {
        approve = approve.with_confirm(
            SlackBlockConfirmItem::new(
                pt!("Approve refund?"),
                md!("Refund *{}* on `{}` now ({}). Stripe is called at once.", amount_text(r), r.target, r.id),
                pt!("Approve"),
                pt!("Cancel"),
            )
            .with_style("primary".to_string()),
        );
    }
    SlackActionsBlock::new(vec![
        approve.into(),
        SlackBlockButtonElement::new(pt!("Deny"))
            .with_action_id(DENY_ACTION.into())
            .with_value(value)
            .with_style(SlackBlockButtonStyle::Danger)
            .into(),
    ])
    .with_block_id(format!("decide_{}", r.id).into())
    .into()
}

/// Who reads a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The card's thread in the finance channel.
    Thread,
    /// The requester, in a direct message.
    Requester,
}

/// The words for a notice, from the request as it is now.
pub fn notice_text(r: &RefundRequest, notice: &Notice, audience: Audience) -> String {
    let refund_id = r.refund.as_ref().map(|f| format!("`{}`", f.id)).unwrap_or_else(|| "the refund".into());
    let what = format!("{} ({} on `{}`)", r.id, amount_text(r), r.target);
    match (notice, audience) {
        (Notice::Rejected, _) => format!(
            ":warning: Your refund request {what} was not sent for approval: {}\nNothing was refunded. Fix the request and try `/refund` again.",
            escape(r.problem.as_deref().unwrap_or("Stripe could not confirm the charge"))
        ),
        (Notice::Approved, _) => {
            let by = r
                .approved
                .as_ref()
                .map(|d| format!("{} {}{}", d.who(), slack_time(d.at), note_text(d)))
                .unwrap_or_default();
            format!(":white_check_mark: Approved by {by}. Sending the refund to Stripe.")
        }
        (Notice::ApprovalRecorded, _) => format!(
            ":ballot_box_with_check: {} of {} approvals: {}. Waiting for another approver.",
            r.approvals.len(),
            r.required_approvals,
            approvers_text(r)
        ),
        (Notice::AutoApproved, _) => {
            let rule = r.policy.as_ref().map(|p| escape(&p.rule)).unwrap_or_default();
            format!(":robot_face: Refunded by the policy without approval ({rule}). Sending the refund to Stripe.")
        }
        (Notice::Denied, Audience::Thread) => {
            let by = r.denied.as_ref().map(|d| format!("{} {}", d.who(), slack_time(d.at))).unwrap_or_default();
            format!(":no_entry: Denied by {by}. Reason: {}", escape(r.deny_reason.as_deref().unwrap_or("")))
        }
        (Notice::Denied, Audience::Requester) => {
            let by = r.denied.as_ref().map(|d| d.who()).unwrap_or_default();
            format!(
                ":no_entry: Your refund request {what} was denied by {by}: {}",
                escape(r.deny_reason.as_deref().unwrap_or(""))
            )
        }
        // Posted after Stripe already reported the outcome (its event can beat this post): the
        // outcome has its own message, so this one does not say "waiting" beside it.
        (Notice::Submitted, _) if r.status != RequestStatus::Submitted => {
            format!(":outbox_tray: Submitted to Stripe as {refund_id}.")
        }
        (Notice::Submitted, _) => {
            let status = r.refund.as_ref().map(|f| f.stripe_status.as_str()).unwrap_or("unknown");
            format!(
                ":outbox_tray: Submitted to Stripe as {refund_id} (Stripe says: {status}). Waiting for Stripe to confirm."
            )
        }
        (Notice::StripeStatus(s), Audience::Thread) => match s {
            RequestStatus::Pending => {
                format!(":hourglass_flowing_sand: Stripe reports {refund_id} pending.")
            }
            RequestStatus::Succeeded => format!(":tada: Stripe confirms {refund_id} of {} succeeded.", amount_text(r)),
            RequestStatus::Failed => format!(
                ":x: The refund failed: {}",
                escape(r.problem.as_deref().unwrap_or("Stripe reported a failure"))
            ),
            RequestStatus::Canceled => {
                format!(":heavy_minus_sign: Stripe reports {refund_id} canceled.")
            }
            other => format!("Status: {other}."),
        },
        (Notice::StripeStatus(s), Audience::Requester) => match s {
            RequestStatus::Succeeded => {
                format!(":tada: Your refund request {what} is done: Stripe confirms the refund succeeded.")
            }
            RequestStatus::Failed => format!(
                ":x: Your refund request {what} failed at Stripe: {}",
                escape(r.problem.as_deref().unwrap_or("Stripe reported a failure"))
            ),
            other => format!("Your refund request {what}: {other}."),
        },
        (Notice::CustomerEmailed { to, kind, at }, _) => {
            let what = match kind {
                crate::domain::EmailKind::RefundSucceeded => "Confirmation",
                crate::domain::EmailKind::RequestDenied => "Denial, with the reason,",
                crate::domain::EmailKind::RefundFailed => "Failure notice",
            };
            let when = at.map(|t| format!(" {}", slack_time(t))).unwrap_or_default();
            format!(":email: {what} emailed to the customer ({}){when}.", escape(to))
        }
        (Notice::OutsideRefund { refund, amount, status }, _) => format!(
            ":information_source: A refund{} (`{refund}`, Stripe says `{}`) was made on this payment outside refund-desk: in the Stripe Dashboard or by another tool. What remains refundable is read again; the card shows it.",
            amount.map(|a| format!(" of {a}")).unwrap_or_default(),
            escape(status)
        ),
        (Notice::Withdrawn, _) => format!(
            ":leftwards_arrow_with_hook: Withdrawn by {} before a decision. Nothing was refunded.",
            mention(&r.requester)
        ),
        (Notice::Reminder { approvers }, _) => {
            let who: Vec<String> = approvers.iter().map(mention).collect();
            let since = r.awaiting_since.map(|t| format!(" since {}", slack_time(t))).unwrap_or_default();
            format!(":alarm_clock: {} has been waiting for approval{since}. {}", r.id, who.join(" "))
        }
        (Notice::Nudge { approvers }, _) => {
            let who: Vec<String> = approvers.iter().map(mention).collect();
            let since = r.awaiting_since.map(|t| format!(" since {}", slack_time(t))).unwrap_or_default();
            format!(
                ":wave: {} asks: {} has been waiting for approval{since}. {}",
                mention(&r.requester),
                r.id,
                who.join(" ")
            )
        }
        (Notice::Escalated { approvers }, _) => {
            let who: Vec<String> = approvers.iter().map(mention).collect();
            let since = r.awaiting_since.map(|t| format!(" since {}", slack_time(t))).unwrap_or_default();
            format!(
                ":rotating_light: Escalated: {} has been waiting for approval{since}. {} you may now approve or deny it.",
                r.id,
                who.join(" ")
            )
        }
        (Notice::WithFinance, _) => format!(
            ":inbox_tray: Your refund request {what} is with finance for approval. You will hear the outcome here."
        ),
        (Notice::Expired, Audience::Thread) => {
            ":hourglass: Expired: nobody decided in time. Nothing was refunded.".to_string()
        }
        (Notice::Expired, Audience::Requester) => {
            format!(
                ":hourglass: Your refund request {what} expired before anyone in finance decided. Nothing was refunded; ask again if it is still needed."
            )
        }
        (Notice::CustomerNotEmailed { why }, _) => {
            format!(":email: The customer was not emailed: {}", escape(why))
        }
    }
}

/// A plain message with `text` as its only section.
pub fn text_message(text: String) -> SlackMessageContent {
    SlackMessageContent::new()
        .with_text(text.clone())
        .with_blocks(vec![SlackSectionBlock::new().with_text(md!("{}", text)).into()])
}

/// The form that asks an approver why they deny.
pub fn deny_modal(r: &RefundRequest) -> SlackView {
    SlackView::Modal(
        SlackModalView::new(
            pt!("Deny {}", r.id),
            vec![
                SlackSectionBlock::new()
                    .with_text(md!(
                        "Deny the refund of *{}* on `{}` asked by {}?",
                        amount_text(r),
                        r.target,
                        mention(&r.requester)
                    ))
                    .into(),
                SlackInputBlock::new(
                    pt!("Reason (the requester will read it)"),
                    SlackBlockPlainTextInputElement::new()
                        .with_action_id(DENY_REASON_ACTION.into())
                        .with_multiline(true)
                        .with_max_length(1000)
                        .into(),
                )
                .with_block_id(DENY_REASON_BLOCK.into())
                .into(),
            ],
        )
        .with_callback_id(DENY_CALLBACK.into())
        .with_private_metadata(r.id.to_string())
        .with_submit(pt!("Deny"))
        .with_close(pt!("Cancel")),
    )
}

/// The form that asks an approver for what approving `r` needs: the amount typed, a note.
pub fn approve_modal(r: &RefundRequest) -> SlackView {
    let asks = r.policy.clone();
    let confirm_amount = asks.as_ref().is_some_and(|p| p.confirm_amount);
    let note_required = asks.as_ref().is_some_and(|p| p.note_required);
    let mut blocks: Vec<SlackBlock> = vec![
        SlackSectionBlock::new()
            .with_text(md!(
                "Approve the refund of *{}* on `{}` asked by {}? Stripe is called once the approvals are in.",
                amount_text(r),
                r.target,
                mention(&r.requester)
            ))
            .into(),
    ];
    if confirm_amount {
        let currency = r.amount.map(|m| m.currency().code().to_uppercase()).unwrap_or_default();
        blocks.push(
            SlackInputBlock::new(
                pt!("Type the amount to refund ({})", currency),
                SlackBlockPlainTextInputElement::new()
                    .with_action_id(INPUT_ACTION.into())
                    .with_placeholder(pt!("as on the card, e.g. 1,250.00"))
                    .into(),
            )
            .with_block_id(APPROVE_AMOUNT_BLOCK.into())
            .into(),
        );
    }
    blocks.push(
        SlackInputBlock::new(
            pt!(
                "{}",
                if note_required {
                    "Why you approve (goes in the thread and the audit trail)"
                } else {
                    "Note (optional)"
                }
            ),
            SlackBlockPlainTextInputElement::new()
                .with_action_id(INPUT_ACTION.into())
                .with_multiline(true)
                .with_max_length(1000)
                .into(),
        )
        .with_block_id(APPROVE_NOTE_BLOCK.into())
        .with_optional(!note_required)
        .into(),
    );
    SlackView::Modal(
        SlackModalView::new(pt!("Approve {}", r.id), blocks)
            .with_callback_id(APPROVE_CALLBACK.into())
            .with_private_metadata(r.id.to_string())
            .with_submit(pt!("Approve"))
            .with_close(pt!("Cancel")),
    )
}

/// The Remind approvers button for request `r`.
fn remind_button(r: &RefundRequest) -> SlackBlock {
    SlackActionsBlock::new(vec![
        SlackBlockButtonElement::new(pt!("Remind approvers"))
            .with_action_id(REMIND_ACTION.into())
            .with_value(r.id.to_string())
            .into(),
    ])
    .with_block_id(format!("remind_{}", r.id).into())
    .into()
}

/// The direct message telling the requester their request is with finance: with the Remind
/// approvers button while it waits, and where it stands once it no longer does.
pub fn with_finance_message(r: &RefundRequest) -> SlackMessageContent {
    let text = notice_text(r, &Notice::WithFinance, Audience::Requester);
    let mut blocks: Vec<SlackBlock> = vec![
        SlackSectionBlock::new().with_text(md!("{}", text)).into(),
        SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(status_line(r)))])
            .into(),
    ];
    if r.status == RequestStatus::AwaitingApproval {
        blocks.push(remind_button(r));
    }
    SlackMessageContent::new().with_text(text).with_blocks(blocks)
}

pub const REQUEST_CALLBACK: &str = "refund_request_modal";
pub const CHARGE_BLOCK: &str = "charge_block";
pub const AMOUNT_BLOCK: &str = "amount_block";
pub const REASON_BLOCK: &str = "reason_block";
pub const EMAIL_BLOCK: &str = "email_block";
pub const NOTE_BLOCK: &str = "note_block";
/// The action id of the one input in each block above.
pub const INPUT_ACTION: &str = "value";

fn text_input(label: &str, block: &str, placeholder: &str, optional: bool, multiline: bool) -> SlackBlock {
    let mut input = SlackBlockPlainTextInputElement::new()
        .with_action_id(INPUT_ACTION.into())
        .with_placeholder(pt!("{}", placeholder));
    if multiline {
        input = input.with_multiline(true).with_max_length(crate::domain::command::MAX_NOTE_CHARS as u64);
    }
    SlackInputBlock::new(pt!("{}", label), input.into()).with_block_id(block.into()).with_optional(optional).into()
}

/// The request form `/refund` opens; `channel` is where it was asked from.
pub fn request_modal(channel: &str) -> SlackView {
    let option =
        |r: crate::domain::RefundReason| SlackBlockChoiceItem::new(pt!("{}", r.label()), r.as_str().to_string());
    let reasons: Vec<_> = crate::domain::RefundReason::ALL.iter().map(|r| option(*r)).collect();
    let reason = SlackBlockStaticSelectElement::new()
        .with_action_id(INPUT_ACTION.into())
        .with_options(reasons)
        .with_initial_option(option(crate::domain::RefundReason::RequestedByCustomer));
    SlackView::Modal(
        SlackModalView::new(
            pt!("Request a refund"),
            vec![
                text_input("Charge or payment intent", CHARGE_BLOCK, "ch_... or pi_..., from Stripe", false, false),
                text_input(
                    "Amount, in the charge's currency",
                    AMOUNT_BLOCK,
                    "25.00; leave empty for everything still refundable",
                    true,
                    false,
                ),
                SlackInputBlock::new(pt!("Reason"), reason.into()).with_block_id(REASON_BLOCK.into()).into(),
                text_input("Customer email", EMAIL_BLOCK, "only if not the one on the payment", true, false),
                text_input("Note for finance", NOTE_BLOCK, "what happened, a ticket link", true, true),
            ],
        )
        .with_callback_id(REQUEST_CALLBACK.into())
        .with_private_metadata(channel.to_string())
        .with_submit(pt!("Ask finance"))
        .with_close(pt!("Cancel")),
    )
}

/// What the form shows once the request is in.
pub fn request_received(r: &RefundRequest) -> SlackView {
    SlackView::Modal(
        SlackModalView::new(
            pt!("Refund requested"),
            vec![
                SlackSectionBlock::new()
                    .with_text(md!(
                        "*{}* is in: {} on `{}` ({}). Finance gets it once Stripe confirms the charge; you will hear the outcome in a direct message.",
                        r.id,
                        r.asked_text(),
                        r.target,
                        r.reason.label()
                    ))
                    .into(),
            ],
        )
        .with_close(pt!("Done")),
    )
}

/// The request id a deny or approve form was opened for.
pub fn modal_request(private_metadata: &str) -> Option<RequestId> {
    RequestId::parse(private_metadata).ok()
}

/// How long ago, in words: `3h 20m`, `2d 4h`, `5m`.
pub fn waited(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = (now - since).num_minutes().max(0);
    let (days, hours, mins) = (minutes / 1440, (minutes / 60) % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{mins}m"),
        (0, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// How many waiting requests the digest lists.
pub const DIGEST_WAITING_SHOWN: usize = 15;
/// How many waiting requests the digest reads to count them; beyond, it says "or more".
pub const DIGEST_WAITING_READ: usize = 1000;

/// A length of time in words: `3h 20m`, `2d 4h`, `5m`, `40s`.
fn duration_text(d: chrono::Duration) -> String {
    if d.num_minutes() == 0 {
        return format!("{}s", d.num_seconds().max(0));
    }
    waited(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC + d)
}

/// The daily digest for the finance channel: the day's requests by outcome, what was refunded,
/// by reason, by approver, how long decisions took, and what still waits, oldest first, each
/// with a link to its card when Slack gave one.
pub fn digest_message(
    d: &crate::domain::digest::Digest,
    tz: chrono_tz::Tz,
    waiting: &[(&RefundRequest, Option<String>)],
    waiting_total: usize,
    now: DateTime<Utc>,
) -> SlackMessageContent {
    let join = |items: Vec<String>| if items.is_empty() { "none".to_string() } else { items.join(" · ") };
    let title = format!("Daily digest for {} ({tz})", d.day.format("%A %-d %B %Y"));
    let mut lines = vec![format!("*{title}*: {} request{} made", d.requests, if d.requests == 1 { "" } else { "s" })];
    lines.push(format!(
        "*By outcome:* {}",
        join(d.outcomes.iter().map(|(s, n)| format!("{} {n}", s.label())).collect())
    ));
    lines.push(format!("*Refunded:* {}", join(d.refunded.iter().map(|m| m.to_string()).collect())));
    lines.push(format!("*By reason:* {}", join(d.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect())));
    lines.push(format!(
        "*By approver:* {}",
        join(
            d.approvers
                .iter()
                .map(|(u, t)| format!("{} approved {}, denied {}", mention(u), t.approved, t.denied))
                .collect()
        )
    ));
    lines.push(match (d.median_to_decision, d.longest_to_decision) {
        (Some(median), Some(longest)) => {
            format!("*Time to a decision:* median {}, longest {}", duration_text(median), duration_text(longest))
        }
        _ => "*Time to a decision:* no request made that day was decided by a person".to_string(),
    });
    let mut blocks: Vec<SlackBlock> = vec![SlackSectionBlock::new().with_text(md!("{}", lines.join("\n"))).into()];
    let count = if waiting_total >= DIGEST_WAITING_READ {
        format!("{waiting_total} or more")
    } else {
        waiting_total.to_string()
    };
    let mut still = vec![format!("*Still waiting* ({count}, oldest first)")];
    if waiting.is_empty() {
        still.push("Nothing waits for approval.".to_string());
    }
    for (r, link) in waiting {
        let id = match link {
            Some(url) => format!("<{url}|{}>", r.id),
            None => r.id.to_string(),
        };
        let since = r.awaiting_since.unwrap_or(r.created_at);
        still.push(format!(
            "• {id} · {} · asked by {} · waiting {}",
            amount_text(r),
            mention(&r.requester),
            waited(since, now)
        ));
    }
    if waiting_total > waiting.len() {
        still.push(format!("… and {} more", waiting_total - waiting.len()));
    }
    blocks.push(SlackSectionBlock::new().with_text(md!("{}", still.join("\n"))).into());
    SlackMessageContent::new().with_text(title).with_blocks(blocks)
}

/// What App Home shows one person.
pub struct HomeParams<'a> {
    pub user: &'a crate::domain::UserId,
    pub is_approver: bool,
    /// Waiting for approval, oldest first.
    pub waiting: &'a [RefundRequest],
    /// The person's own requests, newest first.
    pub mine: &'a [RefundRequest],
    pub requested_today: u64,
    pub refunded_today: &'a [crate::domain::Money],
    pub now: DateTime<Utc>,
}

/// Most items shown per list; Slack allows 100 blocks in a view.
pub const HOME_LIST_LIMIT: usize = 20;

/// The App Home tab: the approver's queue with the same buttons as the card, the person's own
/// requests, and today's totals.
pub fn home_view(p: &HomeParams<'_>) -> SlackView {
    let mut blocks: Vec<SlackBlock> = vec![SlackHeaderBlock::new(pt!("Refund desk")).into()];
    let refunded = if p.refunded_today.is_empty() {
        "nothing refunded yet".to_string()
    } else {
        format!("refunded {}", p.refunded_today.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "))
    };
    blocks.push(
        SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(format!(
            "*Today:* {} requested · {refunded}",
            p.requested_today
        )))])
        .into(),
    );
    if p.is_approver {
        let queue: Vec<&RefundRequest> = p.waiting.iter().take(HOME_LIST_LIMIT).collect();
        blocks.push(SlackDividerBlock::new().into());
        blocks.push(SlackSectionBlock::new().with_text(md!("*Waiting for you* ({})", queue.len())).into());
        if queue.is_empty() {
            blocks.push(
                SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(
                    "Nothing is waiting for you.".into(),
                ))])
                .into(),
            );
        }
        for r in queue {
            let since = r.awaiting_since.unwrap_or(r.created_at);
            let progress = if r.required_approvals > 1 {
                format!(" · {} of {} approvals", r.approvals.len(), r.required_approvals)
            } else {
                String::new()
            };
            let asks: String = approval_asks(r).iter().map(|l| format!("\n{l}")).collect();
            blocks.push(
                SlackSectionBlock::new()
                    .with_text(md!(
                        "*{}* · {} on `{}` · {} · asked by {} · waiting {}{progress}{asks}",
                        r.id,
                        amount_text(r),
                        r.target,
                        r.reason.label(),
                        mention(&r.requester),
                        waited(since, p.now)
                    ))
                    .into(),
            );
            blocks.push(decision_buttons(r));
        }
    }
    blocks.push(SlackDividerBlock::new().into());
    blocks.push(SlackSectionBlock::new().with_text(md!("*Your requests*")).into());
    if p.mine.is_empty() {
        blocks.push(
            SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(SlackBlockMarkDownText::new(
                "None yet. Type `/refund` to ask for one.".into(),
            ))])
            .into(),
        );
    }
    for r in p.mine.iter().take(HOME_LIST_LIMIT) {
        blocks.push(
            SlackSectionBlock::new()
                .with_text(md!("*{}* · {} on `{}` · {}", r.id, amount_text(r), r.target, r.status))
                .into(),
        );
        if r.status == RequestStatus::AwaitingApproval {
            blocks.push(remind_button(r));
        }
    }
    SlackView::Home(SlackHomeView::new(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    fn request() -> RefundRequest {
        let now = Utc::now();
        let mut r = RefundRequest::new(
            RequestId::new(1001),
            NewRequest {
                note: Note::parse("charged <twice> & upset").unwrap(),
                ..NewRequest::full_refund(
                    UserId::parse("UREQ").unwrap(),
                    "C1",
                    PaymentRef::parse("ch_1").unwrap(),
                    RefundReason::Duplicate,
                )
            },
            now,
        );
        let usd = Currency::parse("usd").unwrap();
        r.accept(
            ChargeFacts {
                charge: ChargeId::parse("ch_1").unwrap(),
                payment_intent: None,
                amount: Money::new(2500, usd),
                amount_refunded: Money::new(0, usd),
                created: now - chrono::Duration::days(3),
                customer_email: Some("jenny@example.com".into()),
                customer_name: None,
                card: Some(CardFacts { brand: "visa".into(), last4: "4242".into() }),
                refunds: Some(vec![PriorRefund {
                    id: RefundId::parse("re_before").unwrap(),
                    amount: Money::new(500, usd),
                    status: "succeeded".into(),
                    request: None,
                }]),
                fraud_warnings: vec![],
                disputes: vec![],
                unreadable: vec![],
            },
            Money::new(2500, usd),
            crate::domain::policy::PolicyDecision {
                warnings: vec!["Charged 75 days ago, past the 60-day refund window".into()],
                ..crate::domain::policy::PolicyDecision::new(
                    crate::domain::policy::Route::Approvals(1),
                    "One approval: above the $20.00 auto-approval limit",
                )
            },
            now,
        )
        .unwrap();
        r
    }

    fn json(content: &SlackMessageContent) -> String {
        serde_json::to_string(content).unwrap()
    }

    #[test]
    fn the_submitted_reply_waits_for_stripe_only_while_stripe_has_not_answered() {
        let mut r = request();
        r.refund = Some(crate::domain::RefundRecord {
            id: RefundId::parse("re_1").unwrap(),
            stripe_status: "pending".into(),
            failure_reason: None,
        });
        r.status = RequestStatus::Submitted;
        let posted_in_time = notice_text(&r, &Notice::Submitted, Audience::Thread);
        assert!(posted_in_time.contains("(Stripe says: pending). Waiting for Stripe to confirm."), "{posted_in_time}");
        // Stripe's event beat the post: the outcome has its own reply, so no "waiting" here.
        r.status = RequestStatus::Succeeded;
        r.refund.as_mut().unwrap().stripe_status = "succeeded".into();
        let posted_late = notice_text(&r, &Notice::Submitted, Audience::Thread);
        assert_eq!(posted_late, ":outbox_tray: Submitted to Stripe as `re_1`.");
    }

    #[test]
    fn a_waiting_card_shows_the_facts_and_both_buttons() {
        let card = json(&approval_card(&request(), (&[], 0), Utc::now()));
        for expected in [
            "R-1001",
            "$25.00",
            "jenny@example.com",
            "4242",
            "3 days ago",
            "Visa",
            "refund_approve",
            "refund_deny",
            "\"confirm\"",
            "&lt;twice&gt; &amp;",
        ] {
            assert!(card.contains(expected), "missing {expected}: {card}");
        }
        assert_eq!(card.matches("\"value\":\"R-1001\"").count(), 2);
    }

    #[test]
    fn a_decided_card_has_no_buttons_and_says_who_decided() {
        let mut r = request();
        let approver = UserId::parse("UFIN").unwrap();
        r.approve(
            &approver,
            &crate::domain::Authority::of(Approvers::new([approver.clone()])),
            &crate::domain::Approval::default(),
            Utc::now(),
        )
        .unwrap();
        let card = json(&approval_card(&r, (&[], 0), Utc::now()));
        assert!(!card.contains("refund_approve") && !card.contains("\"actions\""), "{card}");
        assert!(card.contains("Approved by <@UFIN>"), "{card}");
    }

    #[test]
    fn the_deny_form_carries_the_request_and_asks_for_text() {
        let view = serde_json::to_string(&deny_modal(&request())).unwrap();
        assert!(
            view.contains(DENY_CALLBACK) && view.contains(DENY_REASON_BLOCK) && view.contains("plain_text_input"),
            "{view}"
        );
        assert_eq!(modal_request("R-1001"), Some(RequestId::new(1001)));
    }
}
