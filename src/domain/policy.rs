//! The refund policy, and what is left to refund on a charge.
//!
//! [`decide`] is one pure function of the request's reason and amount, the charge, the policy
//! and the clock: refuse, refund without a click, or ask for one or two approvals. [`plan`]
//! first works out the amount (what `full` means, what other open requests on the same charge
//! hold) and then asks [`decide`].

use super::command::{AmountAsked, RefundReason};
use super::ids::{RefundId, RequestId};
use super::money::{Currency, Money};
use super::request::ChargeFacts;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Limits for one currency, in its minor units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrencyRules {
    /// At or below: refunded without approval.
    pub auto_approve_up_to: Option<Money>,
    /// At or above: two different approvers.
    pub second_approval_from: Option<Money>,
    /// Above: refused outright.
    pub max_amount: Option<Money>,
    /// At or above: one approval must be a senior approver's.
    pub senior_from: Option<Money>,
    /// At or above: the approver types the amount to approve.
    pub confirm_amount_from: Option<Money>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Charges older than this are never auto-approved, and the card says so.
    pub refund_window_days: Option<u32>,
    /// Reasons that always need a person.
    pub always_require_approval: BTreeSet<RefundReason>,
    /// By lower-case currency code; a currency without rules always needs one approval.
    pub currencies: BTreeMap<String, CurrencyRules>,
    /// Email the customer the approver's reason when a request is denied.
    pub email_customer_on_deny: bool,
    /// Email the customer when Stripe reports their refund failed.
    pub email_customer_on_failure: bool,
    /// Remind approvers when a request has waited this long.
    pub remind_after: Option<std::time::Duration>,
    /// Expire a request that has waited this long.
    pub expire_after: Option<std::time::Duration>,
    /// Call in the escalation approvers when a request has waited this long.
    pub escalate_after: Option<std::time::Duration>,
    /// The requester's Remind approvers button works at most this often.
    pub remind_cooldown: std::time::Duration,
    /// Approve asks for a note.
    pub require_approval_note: bool,
    /// When the daily digest goes to the finance channel, in `timezone`.
    pub digest_at: Option<chrono::NaiveTime>,
    /// For `digest_at` and the end of a delegation's last day.
    pub timezone: chrono_tz::Tz,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            refund_window_days: None,
            always_require_approval: BTreeSet::new(),
            currencies: BTreeMap::new(),
            email_customer_on_deny: false,
            email_customer_on_failure: false,
            remind_after: None,
            expire_after: None,
            escalate_after: None,
            remind_cooldown: std::time::Duration::from_secs(3600),
            require_approval_note: false,
            digest_at: None,
            timezone: chrono_tz::UTC,
        }
    }
}

impl Policy {
    /// When the day `day` (in the policy's time zone) ends, in UTC.
    pub fn end_of_day(&self, day: chrono::NaiveDate) -> DateTime<Utc> {
        start_of_day(self.timezone, day.succ_opt().unwrap_or(day))
    }

    /// Today, in the policy's time zone.
    pub fn today(&self, now: DateTime<Utc>) -> chrono::NaiveDate {
        now.with_timezone(&self.timezone).date_naive()
    }
}

/// The first instant of `day` in `tz`, in UTC (a day that starts in a DST gap starts when the
/// gap ends).
pub fn start_of_day(tz: chrono_tz::Tz, day: chrono::NaiveDate) -> DateTime<Utc> {
    use chrono::TimeZone;
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        chrono::LocalResult::None => {
            let later = midnight + chrono::Duration::hours(1);
            tz.from_local_datetime(&later).earliest().map(|t| t.with_timezone(&Utc)).unwrap_or_else(|| later.and_utc())
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Refuse,
    AutoApprove,
    /// One or two approvals.
    Approvals(u8),
}

/// What the policy decided, and why, in words an approver reads on the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDecision {
    pub route: Route,
    pub rule: String,
    /// Things an approver should notice (an old charge, earlier refunds).
    pub warnings: Vec<String>,
    /// At or above this, one approval must be a senior's (the threshold, when it applies).
    #[serde(default)]
    pub senior_from: Option<Money>,
    /// Approving asks the approver to type the amount.
    #[serde(default)]
    pub confirm_amount: bool,
    /// Approving asks for a note.
    #[serde(default)]
    pub note_required: bool,
}

impl PolicyDecision {
    /// A decision with no warnings and no extra asks of the approver.
    pub fn new(route: Route, rule: impl Into<String>) -> Self {
        PolicyDecision {
            route,
            rule: rule.into(),
            warnings: vec![],
            senior_from: None,
            confirm_amount: false,
            note_required: false,
        }
    }
}

/// Decides how a refund of `amount` for `reason` on `charge` is handled, and, when it needs
/// approval, what approving it asks for: a senior approver, the typed amount, a note.
pub fn decide(
    reason: RefundReason,
    amount: Money,
    charge: &ChargeFacts,
    policy: &Policy,
    now: DateTime<Utc>,
) -> PolicyDecision {
    let mut decision = route(reason, amount, charge, policy, now);
    if let Route::Approvals(_) = decision.route {
        let rules = policy.currencies.get(amount.currency().code());
        let reached = |limit: Option<Money>| limit.filter(|l| amount.minor() >= l.minor());
        decision.senior_from = reached(rules.and_then(|r| r.senior_from));
        decision.confirm_amount = reached(rules.and_then(|r| r.confirm_amount_from)).is_some();
        decision.note_required = policy.require_approval_note;
    }
    decision
}

fn route(
    reason: RefundReason,
    amount: Money,
    charge: &ChargeFacts,
    policy: &Policy,
    now: DateTime<Utc>,
) -> PolicyDecision {
    let age_days = (now - charge.created).num_days();
    let mut warnings = vec![];
    let outside_window = policy.refund_window_days.is_some_and(|w| age_days > i64::from(w));
    if let Some(window) = policy.refund_window_days.filter(|_| outside_window) {
        warnings.push(format!("Charged {age_days} days ago, past the {window}-day refund window"));
    }
    for dispute in &charge.disputes {
        warnings.push(format!("The charge is disputed ({dispute}); Stripe still allows refunding it"));
    }
    for kind in &charge.fraud_warnings {
        warnings.push(format!("The card network sent an early fraud warning ({kind}) for this charge"));
    }
    if !charge.amount_refunded.is_zero() {
        warnings.push(format!("{} of this charge was refunded before", charge.amount_refunded));
    }
    for what in &charge.unreadable {
        warnings.push(format!("{what}: not readable with this Stripe key"));
    }
    let decision =
        |route, rule: String| PolicyDecision { warnings: warnings.clone(), ..PolicyDecision::new(route, rule) };
    let currency = amount.currency();
    let Some(rules) = policy.currencies.get(currency.code()) else {
        return decision(Route::Approvals(1), format!("One approval: no policy for {currency}"));
    };
    if let Some(max) = rules.max_amount.filter(|max| amount.minor() > max.minor()) {
        return decision(Route::Refuse, format!("{amount} is above the {max} limit for refunds in {currency}"));
    }
    if let Some(from) = rules.second_approval_from.filter(|from| amount.minor() >= from.minor()) {
        return decision(Route::Approvals(2), format!("Two approvals: {amount} is at or above {from}"));
    }
    let Some(limit) = rules.auto_approve_up_to else {
        return decision(Route::Approvals(1), format!("One approval: no auto-approval in {currency}"));
    };
    if amount.minor() > limit.minor() {
        return decision(Route::Approvals(1), format!("One approval: above the {limit} auto-approval limit"));
    }
    if policy.always_require_approval.contains(&reason) {
        return decision(Route::Approvals(1), format!("One approval: `{}` refunds always need one", reason.as_str()));
    }
    if outside_window {
        return decision(Route::Approvals(1), "One approval: the charge is outside the refund window".to_string());
    }
    if !charge.fraud_warnings.is_empty() {
        return decision(Route::Approvals(1), "One approval: the charge has an early fraud warning".to_string());
    }
    if !charge.disputes.is_empty() {
        return decision(Route::Approvals(1), "One approval: the charge is disputed".to_string());
    }
    if let Some(what) = charge.unreadable.first() {
        return decision(Route::Approvals(1), format!("One approval: {what} could not be read with this Stripe key"));
    }
    decision(Route::AutoApprove, format!("Auto-approved: at or under the {limit} limit"))
}

/// An amount another open request on the same charge holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub request: RequestId,
    pub amount: Money,
    /// Set once Stripe made the refund; from then on Stripe counts it itself.
    pub refund: Option<RefundId>,
}

/// What can still be refunded on the charge for request `me`: what Stripe says remains, less
/// what other open requests hold and Stripe does not count yet, rounded down to what Stripe
/// accepts. Also returns the requests that were counted.
pub fn available(charge: &ChargeFacts, holds: &[Hold], me: RequestId) -> (Money, Vec<RequestId>) {
    let currency = charge.amount.currency();
    let mut left = charge.remaining().minor();
    let mut counted = vec![];
    for hold in holds.iter().filter(|h| h.request != me) {
        let known_to_stripe = match (&hold.refund, &charge.refunds) {
            (None, _) => false,
            (Some(id), Some(listed)) => listed.iter().any(|r| r.id == *id),
            // Without Stripe's list, a made refund is assumed counted in `amount_refunded`.
            (Some(_), None) => true,
        };
        if !known_to_stripe {
            left = left.saturating_sub(hold.amount.minor());
            counted.push(hold.request);
        }
    }
    (Money::new(currency.refundable_part(left), currency), counted)
}

/// What to do with a checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Refuse(String),
    Go(Money, PolicyDecision),
}

fn list(ids: &[RequestId]) -> String {
    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// The amount to refund and how, for a request whose charge is refundable at all.
pub fn plan(
    id: RequestId,
    asked: &AmountAsked,
    reason: RefundReason,
    charge: &ChargeFacts,
    holds: &[Hold],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Plan {
    let (left, counted) = available(charge, holds, id);
    let open = if counted.is_empty() {
        String::new()
    } else {
        format!(" once the open requests on it ({}) are counted", list(&counted))
    };
    let amount = match asked {
        AmountAsked::Full => left,
        AmountAsked::Exact(input) => match input.to_money(currency_of(charge)) {
            Ok(m) => m,
            Err(e) => return Plan::Refuse(e.to_string()),
        },
    };
    if left.is_zero() {
        return Plan::Refuse(format!("nothing is left to refund on `{}`{open}", charge.charge));
    }
    if amount.minor() > left.minor() {
        return Plan::Refuse(format!("{amount} is more than the {left} still refundable on `{}`{open}", charge.charge));
    }
    let decision = decide(reason, amount, charge, policy, now);
    if decision.route == Route::Refuse {
        return Plan::Refuse(format!("{}; finance can refund it in Stripe directly if it must be", decision.rule));
    }
    Plan::Go(amount, decision)
}

fn currency_of(charge: &ChargeFacts) -> Currency {
    charge.amount.currency()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AmountInput, ChargeId, PriorRefund};

    fn usd(minor: u64) -> Money {
        Money::new(minor, Currency::parse("usd").unwrap())
    }

    fn charge(amount: u64, refunded: u64, days_old: i64) -> ChargeFacts {
        ChargeFacts {
            charge: ChargeId::parse("ch_1").unwrap(),
            payment_intent: None,
            amount: usd(amount),
            amount_refunded: usd(refunded),
            created: Utc::now() - chrono::Duration::days(days_old),
            customer_email: None,
            customer_name: None,
            card: None,
            refunds: Some(vec![]),
            fraud_warnings: vec![],
            unreadable: vec![],
            disputes: vec![],
        }
    }

    /// The contract's example policy.
    fn policy() -> Policy {
        Policy {
            refund_window_days: Some(60),
            always_require_approval: [RefundReason::Goodwill, RefundReason::Other].into(),
            currencies: [(
                "usd".to_string(),
                CurrencyRules {
                    auto_approve_up_to: Some(usd(2500)),
                    second_approval_from: Some(usd(100_000)),
                    max_amount: Some(usd(500_000)),
                    ..CurrencyRules::default()
                },
            )]
            .into(),
            ..Policy::default()
        }
    }

    #[test]
    fn the_policy_table() {
        use RefundReason::*;
        use Route::*;
        let eur = Money::new(100, Currency::parse("eur").unwrap());
        let cases: [(&str, RefundReason, Money, i64, Route, &str); 12] = [
            ("small and recent", Duplicate, usd(2500), 3, AutoApprove, "Auto-approved"),
            ("one cent over the limit", Duplicate, usd(2501), 3, Approvals(1), "above the $25.00"),
            ("tiny", RequestedByCustomer, usd(1), 0, AutoApprove, "Auto-approved"),
            ("goodwill is never automatic", Goodwill, usd(100), 3, Approvals(1), "`goodwill`"),
            ("other is never automatic", Other, usd(100), 3, Approvals(1), "`other`"),
            ("past the window", Duplicate, usd(100), 61, Approvals(1), "outside the refund window"),
            ("the window's last day", Duplicate, usd(100), 60, AutoApprove, "Auto-approved"),
            ("just under a second approval", Duplicate, usd(99_999), 3, Approvals(1), "One approval"),
            ("second approval from", Duplicate, usd(100_000), 3, Approvals(2), "Two approvals"),
            ("at the cap", Duplicate, usd(500_000), 3, Approvals(2), "Two approvals"),
            ("over the cap", Duplicate, usd(500_001), 3, Refuse, "above the $5,000.00 limit"),
            ("a currency without rules", Duplicate, eur, 3, Approvals(1), "no policy for EUR"),
        ];
        for (name, reason, amount, days, route, rule) in cases {
            let d = decide(reason, amount, &charge(1_000_000, 0, days), &policy(), Utc::now());
            assert_eq!(d.route, route, "{name}: {d:?}");
            assert!(d.rule.contains(rule), "{name}: {}", d.rule);
        }
    }

    #[test]
    fn an_early_fraud_warning_needs_a_person_and_is_shown() {
        let mut c = charge(2500, 0, 1);
        c.fraud_warnings = vec!["made_with_stolen_card".into()];
        let d = decide(RefundReason::Duplicate, usd(100), &c, &policy(), Utc::now());
        assert_eq!(d.route, Route::Approvals(1));
        assert!(d.warnings.iter().any(|w| w.contains("made_with_stolen_card")), "{:?}", d.warnings);
    }

    #[test]
    fn no_policy_means_one_approval_for_everything() {
        let d = decide(RefundReason::Duplicate, usd(1), &charge(100, 0, 0), &Policy::default(), Utc::now());
        assert_eq!(d.route, Route::Approvals(1));
    }

    #[test]
    fn warnings_tell_the_approver_what_to_look_at() {
        let d = decide(RefundReason::Duplicate, usd(100), &charge(2500, 1000, 75), &policy(), Utc::now());
        assert!(d.warnings.iter().any(|w| w.contains("75 days ago") && w.contains("60-day")), "{:?}", d.warnings);
        assert!(d.warnings.iter().any(|w| w.contains("$10.00") && w.contains("refunded before")), "{:?}", d.warnings);
    }

    fn hold(n: u64, amount: u64, refund: Option<&str>) -> Hold {
        Hold { request: RequestId::new(n), amount: usd(amount), refund: refund.map(|r| RefundId::parse(r).unwrap()) }
    }

    #[test]
    fn open_requests_on_the_same_charge_hold_their_amount() {
        let me = RequestId::new(9);
        let c = charge(2500, 0, 1);
        assert_eq!(available(&c, &[], me).0, usd(2500));
        assert_eq!(available(&c, &[hold(1, 1000, None)], me), (usd(1500), vec![RequestId::new(1)]));
        assert_eq!(available(&c, &[hold(9, 1000, None)], me).0, usd(2500), "a request does not hold against itself");
        // Made at Stripe and listed there: Stripe's amount_refunded already counts it.
        let mut made = charge(2500, 1000, 1);
        let prior = PriorRefund {
            id: RefundId::parse("re_1").unwrap(),
            amount: usd(1000),
            status: "pending".into(),
            request: None,
        };
        made.refunds = Some(vec![prior]);
        assert_eq!(available(&made, &[hold(1, 1000, Some("re_1"))], me).0, usd(1500));
        // Made at Stripe after the charge was read: not in the list yet, so it still holds.
        let stale = charge(2500, 0, 1);
        assert_eq!(available(&stale, &[hold(1, 1000, Some("re_1"))], me).0, usd(1500));
        assert_eq!(available(&c, &[hold(1, 3000, None)], me).0, usd(0));
    }

    #[test]
    fn partial_refunds_then_full_take_what_remains() {
        // 10.00, then 5.00, then `full` on a 25.00 charge: 1000, 500, 1000.
        let exact = |t: &str| AmountAsked::Exact(AmountInput::parse(t).unwrap());
        let go = |asked: &AmountAsked, c: &ChargeFacts, holds: &[Hold]| match plan(
            RequestId::new(9),
            asked,
            RefundReason::Duplicate,
            c,
            holds,
            &Policy::default(),
            Utc::now(),
        ) {
            Plan::Go(m, _) => m.minor(),
            Plan::Refuse(why) => panic!("{why}"),
        };
        assert_eq!(go(&exact("10.00"), &charge(2500, 0, 1), &[]), 1000);
        assert_eq!(go(&exact("5.00"), &charge(2500, 1000, 1), &[]), 500);
        assert_eq!(go(&AmountAsked::Full, &charge(2500, 1500, 1), &[]), 1000);
    }

    #[test]
    fn two_open_requests_cannot_together_exceed_the_charge() {
        let exact = AmountAsked::Exact(AmountInput::parse("15.00").unwrap());
        let refused = plan(
            RequestId::new(2),
            &exact,
            RefundReason::Duplicate,
            &charge(2500, 0, 1),
            &[hold(1, 1500, None)],
            &Policy::default(),
            Utc::now(),
        );
        match refused {
            Plan::Refuse(why) => {
                assert!(why.contains("$15.00 is more than the $10.00") && why.contains("R-1"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let full = plan(
            RequestId::new(2),
            &AmountAsked::Full,
            RefundReason::Duplicate,
            &charge(2500, 0, 1),
            &[hold(1, 2500, None)],
            &Policy::default(),
            Utc::now(),
        );
        assert!(matches!(full, Plan::Refuse(why) if why.contains("nothing is left")));
    }

    #[test]
    fn over_the_cap_is_refused_with_the_limit() {
        let exact = AmountAsked::Exact(AmountInput::parse("6000").unwrap());
        match plan(
            RequestId::new(1),
            &exact,
            RefundReason::Duplicate,
            &charge(1_000_000, 0, 1),
            &[],
            &policy(),
            Utc::now(),
        ) {
            Plan::Refuse(why) => assert!(why.contains("above the $5,000.00 limit"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
