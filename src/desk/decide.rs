//! An approver decides: approve, or deny with a reason. Each is one compare-and-swap on the
//! request, on disk before the approver is answered; the domain says who may and what follows.

use crate::context::AppContext;
use crate::domain::{DecisionError, RefundRequest, RequestId, UserId};
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

/// `user` approves request `id`.
pub async fn approve(ctx: &AppContext, id: RequestId, user: &UserId) -> Result<Decided, StoreError> {
    let approvers = ctx.approvers();
    let now = ctx.now();
    let result = ctx.store.transition(id, now, |r| r.approve(user, &approvers, now).map(Some)).await?;
    Ok(match result {
        Ok(_) => {
            tracing::info!(request_id = %id, "approved");
            Decided::Done
        }
        Err(refusal) => Decided::Refused(refusal),
    })
}

/// `user` denies request `id`, saying why.
pub async fn deny(ctx: &AppContext, id: RequestId, user: &UserId, reason: &str) -> Result<Decided, StoreError> {
    let approvers = ctx.approvers();
    let now = ctx.now();
    let result = ctx.store.transition(id, now, |r| r.deny(user, reason, &approvers, now).map(Some)).await?;
    Ok(match result {
        Ok(_) => {
            tracing::info!(request_id = %id, "denied");
            Decided::Done
        }
        Err(refusal) => Decided::Refused(refusal),
    })
}

/// Whether `user` may decide request `id` now: asked before the deny form opens, so nobody
/// gets a form they cannot submit. `Ok(None)` when there is no such request.
pub async fn may_decide(
    ctx: &AppContext,
    id: RequestId,
    user: &UserId,
) -> Result<Option<Result<RefundRequest, DecisionError>>, StoreError> {
    let Some(request) = ctx.store.get_request_durable(id).await? else { return Ok(None) };
    Ok(Some(request.may_decide(user, &ctx.approvers()).map(|()| request)))
}
