//! An approver decides: approve (with a note or the typed amount when the request asks), or
//! deny with a reason; the requester nudges the approvers. Each is one compare-and-swap on the
//! request, on disk before anyone is answered; the domain says who may, in whose name, and what
//! follows.

use crate::context::AppContext;
use crate::domain::{Approval, DecisionError, RefundRequest, RequestId, UserId};
use crate::storage::StoreError;

/// What a decision came to, as the approver is to hear it.
#[derive(Debug)]
pub enum Decided {
    /// Recorded; what follows (the refund, the thread, the requester) is queued.
    Done,
    /// Refused by the rules (not an approver, their own request, already decided, ...):
    /// nothing changed.
    Refused(DecisionError),
}

fn decided<T>(result: Result<T, DecisionError>, id: RequestId, what: &str) -> Decided {
    match result {
        Ok(_) => {
            tracing::info!(request_id = %id, "{what}");
            Decided::Done
        }
        Err(refusal) => Decided::Refused(refusal),
    }
}

/// `user` approves request `id`, with what the approval form gave (nothing after a plain click).
pub async fn approve(ctx: &AppContext, id: RequestId, user: &UserId, given: &Approval) -> Result<Decided, StoreError> {
    let authority = ctx.authority().await?;
    let now = ctx.now();
    let result = ctx.store.transition(id, now, |r| r.approve(user, &authority, given, now).map(Some)).await?;
    Ok(decided(result, id, "approved"))
}

/// `user` denies request `id`, saying why.
pub async fn deny(ctx: &AppContext, id: RequestId, user: &UserId, reason: &str) -> Result<Decided, StoreError> {
    let authority = ctx.authority().await?;
    let now = ctx.now();
    let result = ctx.store.transition(id, now, |r| r.deny(user, reason, &authority, now).map(Some)).await?;
    Ok(decided(result, id, "denied"))
}

/// The requester presses Remind approvers on request `id`.
pub async fn nudge(ctx: &AppContext, id: RequestId, user: &UserId) -> Result<Decided, StoreError> {
    let authority = ctx.authority().await?;
    let cooldown = ctx.settings.policy.remind_cooldown;
    let now = ctx.now();
    let result = ctx.store.transition(id, now, |r| r.nudge(user, &authority, cooldown, now).map(Some)).await?;
    Ok(decided(result, id, "approvers reminded by the requester"))
}

/// Which decision a form is about to be opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    Approve,
    Deny,
}

/// Whether `user` may make decision `asking` on request `id` now: asked before a form opens,
/// so nobody gets a form they cannot submit. `Ok(None)` when there is no such request.
pub async fn may_decide(
    ctx: &AppContext,
    id: RequestId,
    user: &UserId,
    asking: Asking,
) -> Result<Option<Result<RefundRequest, DecisionError>>, StoreError> {
    let Some(request) = ctx.store.get_request_durable(id).await? else { return Ok(None) };
    let authority = ctx.authority().await?;
    let allowed = match asking {
        Asking::Approve => request.may_approve(user, &authority),
        Asking::Deny => request.may_deny(user, &authority),
    };
    Ok(Some(allowed.map(|()| request)))
}
