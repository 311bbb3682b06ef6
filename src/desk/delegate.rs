//! `/refund delegate`: an approver hands their decisions to someone until the end of a day
//! (in the policy's time zone), ends that early, or looks at it. Delegations are shared values
//! in the store, one per delegator, so every replica sees a change at once and two approvers
//! delegating at the same moment never overwrite each other.

use crate::context::{AppContext, DELEGATION_PREFIX};
use crate::domain::command::DelegateCommand;
use crate::domain::{Delegation, UserId};
use crate::storage::StoreError;
use std::sync::Arc;

/// How far ahead a delegation may end.
const MAX_DAYS_AHEAD: i64 = 366;

fn key(delegator: &UserId) -> String {
    format!("{DELEGATION_PREFIX}{delegator}")
}

/// `delegator`'s delegation, if one is in force.
async fn current(ctx: &AppContext, delegator: &UserId) -> Result<Option<Delegation>, StoreError> {
    let stored = ctx.store.shared_value(&key(delegator)).await?;
    let now = ctx.now();
    Ok(stored.and_then(|v| serde_json::from_str::<Option<Delegation>>(&v).ok().flatten()).filter(|d| d.is_active(now)))
}

/// Carries out `/refund delegate ...` for `user` and says what came of it, privately.
pub async fn handle(ctx: &Arc<AppContext>, user: &UserId, command: DelegateCommand) -> Result<String, StoreError> {
    let tz = ctx.settings.policy.timezone;
    match command {
        DelegateCommand::Show => {
            let mut lines = vec![];
            match current(ctx, user).await? {
                Some(d) => lines.push(format!(
                    "Until the end of {} ({tz}), <@{}> may approve or deny refunds on your behalf. `/refund delegate off` ends it.",
                    d.until, d.to
                )),
                None => lines.push("You have not handed your approvals to anyone.".to_string()),
            }
            for d in ctx.authority().await?.delegates_to(user) {
                lines
                    .push(format!("<@{}> has handed you their approvals until the end of {} ({tz}).", d.from, d.until));
            }
            Ok(lines.join("\n"))
        }
        DelegateCommand::Off => match current(ctx, user).await? {
            Some(d) => {
                ctx.store.set_shared_value(&key(user), "null").await?;
                tracing::info!(slack_user = %user, delegate = %d.to, "delegation ended");
                Ok(format!("Your delegation to <@{}> has ended; only you decide in your name again.", d.to))
            }
            None => Ok("You have not handed your approvals to anyone, so there is nothing to end.".to_string()),
        },
        DelegateCommand::To { delegate, until } => {
            let now = ctx.now();
            let today = ctx.settings.policy.today(now);
            if !ctx.authority().await?.may_delegate(user) {
                return Ok("Only finance approvers can hand their approvals to someone.".to_string());
            }
            if delegate == *user {
                return Ok("You cannot hand your approvals to yourself; name someone else.".to_string());
            }
            if until < today {
                return Ok(format!("{until} has passed (today is {today} in {tz}); name a later day."));
            }
            if (until - today).num_days() > MAX_DAYS_AHEAD {
                return Ok(format!("A delegation can last at most {MAX_DAYS_AHEAD} days; name an earlier day."));
            }
            let delegation = Delegation {
                from: user.clone(),
                to: delegate.clone(),
                until,
                ends_at: ctx.settings.policy.end_of_day(until),
                set_at: now,
            };
            let value = serde_json::to_string(&Some(&delegation)).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            ctx.store.set_shared_value(&key(user), &value).await?;
            tracing::info!(slack_user = %user, delegate = %delegate, %until, "delegation set");
            ctx.tell_privately(
                None,
                delegate.clone(),
                format!(
                    "<@{user}> has handed you their refund approvals until the end of {until} ({tz}). \
                     Their requests to decide are in refund-desk's App Home; you can never decide your own."
                ),
            );
            Ok(format!(
                "Until the end of {until} ({tz}), <@{delegate}> may approve or deny refunds on your behalf; \
                 the card and the audit trail will say so. `/refund delegate off` ends it sooner."
            ))
        }
    }
}
