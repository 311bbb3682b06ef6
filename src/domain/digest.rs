//! The daily digest's figures: the requests made on one day (in the policy's time zone), by
//! outcome, the money refunded per currency, by reason, by approver, and how long people
//! waited for a decision. Pure: the caller reads the requests and posts the words.

use super::ids::UserId;
use super::money::Money;
use super::request::{RefundRequest, RequestStatus};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::BTreeMap;

/// What one approver decided among the day's requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApproverTally {
    pub approved: u32,
    pub denied: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub day: NaiveDate,
    pub requests: usize,
    /// By status, in the order of a request's life.
    pub outcomes: Vec<(RequestStatus, u32)>,
    /// Refunds Stripe confirmed, summed per currency (by currency code).
    pub refunded: Vec<Money>,
    /// By reason label, most first.
    pub reasons: Vec<(String, u32)>,
    /// By the person who clicked (a delegate counts as themselves), most decisions first.
    pub approvers: Vec<(UserId, ApproverTally)>,
    /// From request to a person's decision (approved or denied), over the requests decided.
    pub median_to_decision: Option<chrono::Duration>,
    pub longest_to_decision: Option<chrono::Duration>,
}

/// The figures for the requests made between `from` and `to` (one day), out of `requests`.
pub fn digest(day: NaiveDate, from: DateTime<Utc>, to: DateTime<Utc>, requests: &[RefundRequest]) -> Digest {
    let of_day: Vec<&RefundRequest> = requests.iter().filter(|r| r.created_at >= from && r.created_at < to).collect();
    let mut outcomes: BTreeMap<u8, (RequestStatus, u32)> = BTreeMap::new();
    let mut refunded: BTreeMap<String, Money> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    let mut approvers: BTreeMap<UserId, ApproverTally> = BTreeMap::new();
    let mut waits: Vec<chrono::Duration> = vec![];
    for r in &of_day {
        outcomes.entry(r.status.code()).or_insert((r.status, 0)).1 += 1;
        *reasons.entry(r.reason.label().to_string()).or_default() += 1;
        if r.status == RequestStatus::Succeeded
            && let Some(amount) = r.amount
        {
            let code = amount.currency().code().to_string();
            let sum = refunded.entry(code).or_insert_with(|| Money::new(0, amount.currency()));
            *sum = Money::new(sum.minor() + amount.minor(), amount.currency());
        }
        for a in &r.approvals {
            approvers.entry(a.by.clone()).or_default().approved += 1;
        }
        if let Some(d) = &r.denied {
            approvers.entry(d.by.clone()).or_default().denied += 1;
        }
        let decided = if r.auto_approved { None } else { r.approved.as_ref().or(r.denied.as_ref()) };
        if let Some(d) = decided {
            waits.push(d.at - r.created_at);
        }
    }
    waits.sort();
    let median = match waits.len() {
        0 => None,
        n if n % 2 == 1 => Some(waits[n / 2]),
        n => Some((waits[n / 2 - 1] + waits[n / 2]) / 2),
    };
    let mut reasons: Vec<(String, u32)> = reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut approvers: Vec<(UserId, ApproverTally)> = approvers.into_iter().collect();
    approvers.sort_by(|a, b| (b.1.approved + b.1.denied).cmp(&(a.1.approved + a.1.denied)).then(a.0.cmp(&b.0)));
    Digest {
        day,
        requests: of_day.len(),
        outcomes: outcomes.into_values().collect(),
        refunded: refunded.into_values().collect(),
        reasons,
        approvers,
        median_to_decision: median,
        longest_to_decision: waits.last().copied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::tests::{approvers, user, waiting};
    use crate::domain::{Approval, RefundReason, RequestId};

    #[test]
    fn a_day_with_mixed_outcomes_adds_up() {
        let start = Utc::now() - chrono::Duration::hours(10);
        let at = |h: i64| start + chrono::Duration::hours(h);
        let made = |id: u64, h: i64| {
            let mut r = waiting();
            r.id = RequestId::new(id);
            r.created_at = at(h);
            r
        };
        let mut refunded = made(1, 0);
        refunded.approve(&user("UFIN"), &approvers(), &Approval::default(), at(1)).unwrap();
        refunded.status = RequestStatus::Succeeded;
        let mut denied = made(2, 1);
        denied.reason = RefundReason::Goodwill;
        denied.deny(&user("UFIN"), "no", &approvers(), at(4)).unwrap();
        let still_waiting = made(3, 2);
        let yesterday = made(4, -20);
        let mut auto = made(5, 3);
        auto.auto_approved = true;
        auto.status = RequestStatus::Succeeded;
        let all = [refunded, denied, still_waiting, yesterday, auto];

        let d = digest(start.date_naive(), start, start + chrono::Duration::days(1), &all);

        assert_eq!(d.requests, 4, "the request made the day before is not counted");
        assert_eq!(
            d.outcomes,
            vec![(RequestStatus::AwaitingApproval, 1), (RequestStatus::Succeeded, 2), (RequestStatus::Denied, 1)]
        );
        assert_eq!(d.refunded.iter().map(|m| m.to_string()).collect::<Vec<_>>(), vec!["$50.00"]);
        assert_eq!(d.reasons[0].1, 3);
        assert_eq!(d.approvers, vec![(user("UFIN"), ApproverTally { approved: 1, denied: 1 })]);
        assert_eq!(d.median_to_decision, Some(chrono::Duration::hours(2)), "1h and 3h; auto-approval is no decision");
        assert_eq!(d.longest_to_decision, Some(chrono::Duration::hours(3)));
    }
}
