//! Someone asks for a refund, by slash command or by the form: who may ask, a quick look at
//! Stripe for the form (within a budget, never required), and the request stored, on disk before
//! they are answered. Checking the payment properly, the policy and the card are jobs.

use crate::context::AppContext;
use crate::domain::{AmountAsked, NewRequest, PaymentRef, RefundRequest, UserId};
use crate::slack::api::SlackCallError;
use crate::storage::{ClientKey, KeyedInsert, StoreError};

/// `SLACK_REQUESTERS`, when set, limits who may ask for refunds; `Err` is what to tell them.
pub fn may_ask(ctx: &AppContext, user: &UserId) -> Result<(), String> {
    match &ctx.settings.slack.requesters {
        Some(allowed) if !allowed.contains(user) => Err(
            "You are not on the list of people who may ask for refunds, so nothing was stored. Ask finance to add you."
                .into(),
        ),
        _ => Ok(()),
    }
}

/// Stores the request; durable on return.
pub async fn ask(ctx: &AppContext, new: NewRequest) -> Result<RefundRequest, StoreError> {
    ctx.store.insert_request(new, ctx.now()).await
}

/// Stores a request from an API client, unless its key made one before; durable on return.
pub async fn ask_as_client(ctx: &AppContext, new: NewRequest, key: &ClientKey) -> Result<KeyedInsert, StoreError> {
    ctx.store.insert_keyed_request(new, key, ctx.now()).await
}

/// The Slack user an API client names by email; `None` when Slack has no such person.
pub async fn requester_by_email(ctx: &AppContext, email: &str) -> Result<Option<UserId>, SlackCallError> {
    Ok(ctx.slack.user_by_email(email).await?.and_then(|id| UserId::parse(&id.0).ok()))
}

/// Up to `shown` requests on the same payment made before `request`, to tell the asker. Only
/// requests numbered before it: they were written no later than it, so the sync it waited for
/// covers them too. A failed read is logged and shows none.
pub async fn earlier_on_payment(ctx: &AppContext, request: &RefundRequest, shown: usize) -> Vec<RefundRequest> {
    match ctx.store.others_on_payment(request, shown).await {
        Ok((mut others, _)) => {
            others.retain(|o| o.id < request.id);
            others
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the other requests on the payment");
            vec![]
        }
    }
}

/// Which of the asker's inputs a problem Stripe reported is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Payment,
    Amount,
}

/// Whether Stripe knows the payment and has enough left; `Err` when it says no, naming the
/// input at fault. Stripe being slow or down is not a no: the request is accepted and checked
/// by its job.
pub async fn quick_check(ctx: &AppContext, target: &PaymentRef, amount: &AmountAsked) -> Result<(), (Input, String)> {
    use crate::stripe::StripeError;
    let missing = |what: String| (Input::Payment, format!("Stripe has no {what}; check the id."));
    let charge = match target {
        PaymentRef::Charge(id) => ctx.stripe.get_charge(id.as_str()).await,
        PaymentRef::PaymentIntent(pi) => match ctx.stripe.get_payment_intent(pi.as_str()).await {
            Ok(intent) => match intent.latest_charge {
                Some(c) => ctx.stripe.get_charge(c.id()).await,
                None => {
                    return Err((
                        Input::Payment,
                        format!("The payment intent `{pi}` has no charge yet (Stripe says `{}`).", intent.status),
                    ));
                }
            },
            Err(e) => Err(e),
        },
    };
    let charge = match charge {
        Ok(c) => c,
        Err(StripeError::NotFound(_)) => return Err(missing(format!("payment `{target}`"))),
        Err(_) => return Ok(()),
    };
    let Ok(facts) = crate::worker::handlers::facts_of(&charge) else { return Ok(()) };
    if let Some(why) = crate::worker::handlers::unrefundable(&charge, &facts) {
        return Err((Input::Payment, why));
    }
    if let AmountAsked::Exact(input) = amount {
        let remaining = facts.remaining();
        match input.to_money(remaining.currency()) {
            Err(e) => return Err((Input::Amount, e.to_string())),
            Ok(m) if m.minor() > remaining.minor() => {
                return Err((Input::Amount, format!("{m} is more than the {remaining} still refundable.")));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}
