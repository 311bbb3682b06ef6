//! What the desk does with Stripe's news about a refund (from an event, or read back from
//! Stripe): whose refund it is, whether that request moves, and what is announced when it is
//! nobody's. The rule is written once, here; a store only reads what it asks for and writes
//! what it returns, inside one transaction, so two engines cannot disagree.

use super::policy::Hold;
use super::request::{Actor, Effect, Notice, RefundRequest, RefundUpdate, RequestStatus, Transition, owner_of_refund};
use super::{ChargeId, RefundId, RequestId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// What a store reads for [`apply_refund_news`], inside the transaction that will write its
/// answer: every read sees the writes made before it in that transaction. (An embedded store's
/// reads are ready at once; a database's are awaited.)
pub trait RefundNewsReads {
    type Error;
    /// The request a refund id was recorded for, if any.
    fn recorded_owner(&mut self, refund: &RefundId) -> impl Future<Output = Result<Option<RequestId>, Self::Error>>;
    fn request(&mut self, id: RequestId) -> impl Future<Output = Result<Option<RefundRequest>, Self::Error>>;
    /// The money held by the open requests on `charge`.
    fn holds_on(&mut self, charge: &ChargeId) -> impl Future<Output = Result<Vec<Hold>, Self::Error>>;
    /// The refund, recorded as made outside the desk, if it was seen before.
    fn outside_refund(&mut self, refund: &RefundId)
    -> impl Future<Output = Result<Option<OutsideRefund>, Self::Error>>;
}

/// What a store writes for one piece of news, in this order, in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundNewsWrite {
    /// A request moves: the request, its audit entry and a job per effect.
    Transition(RefundRequest, Transition),
    /// A request changed outside the state machine (its refund's status refreshed): the request
    /// and its hold, no audit entry.
    Request(RefundRequest),
    /// The refund id is the request's, so later news finds it by id.
    RecordRefund(RefundId, RequestId),
    /// A refund that is no request's, recorded or refreshed.
    Outside(OutsideRefund),
}

/// A refund Stripe reported that belongs to no request of this installation: made in the
/// Dashboard, by another tool, or by another installation on the same account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideRefund {
    pub refund: RefundId,
    pub status: String,
    pub charge: Option<String>,
    pub payment_intent: Option<String>,
    /// The request its metadata named, if any: not ours all the same.
    pub claimed_request: Option<RequestId>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// What one piece of news did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Not a refund of this installation's requests (recorded as an [`OutsideRefund`]).
    NotOurs(RefundId),
    /// Known, but the status did not move forward.
    Unchanged(RequestId),
    Moved(RequestId, RequestStatus),
}

/// What a Stripe event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// Seen before: nothing changed.
    Duplicate,
    /// Recorded; one entry per refund in the event.
    Applied(Vec<RefundOutcome>),
}

/// Decides what Stripe's news about one refund does. The refund is the request's it was
/// recorded for, or the request its metadata names if that request may claim it
/// ([`owner_of_refund`]); that request moves if the news moves it. A refund that is nobody's
/// is recorded as made outside the desk; the first time it is seen, every open request holding
/// money on its charge hears of it in its thread and has the charge read again.
pub async fn apply_refund_news<R: RefundNewsReads>(
    reads: &mut R,
    news: &RefundUpdate,
    install_id: &str,
    now: DateTime<Utc>,
) -> Result<(RefundOutcome, Vec<RefundNewsWrite>), R::Error> {
    let recorded = reads.recorded_owner(&news.refund).await?;
    let hinted = match (recorded, news.request_hint) {
        (None, Some(hint)) => reads.request(hint).await?,
        _ => None,
    };
    let owner = match owner_of_refund(recorded, hinted.as_ref(), news, install_id) {
        None => None,
        Some(id) if hinted.as_ref().is_some_and(|h| h.id == id) => hinted,
        Some(id) => reads.request(id).await?,
    };
    if let Some(request) = owner
        && let Some(placed) = place(request, news, recorded.is_some(), now)
    {
        return Ok(placed);
    }
    outside(reads, news, now).await
}

/// The news for `request`, whose refund it is; `None` when the request cannot take it after
/// all (named only by metadata, but not approved yet, or ended): then it is a refund made
/// outside the desk, and must not go unseen.
fn place(
    mut request: RefundRequest,
    news: &RefundUpdate,
    recorded: bool,
    now: DateTime<Utc>,
) -> Option<(RefundOutcome, Vec<RefundNewsWrite>)> {
    let id = request.id;
    let before = request.clone();
    let moved = request.record_stripe_refund(news.refund.clone(), &news.status, news.failure_reason.clone(), now);
    let its_refund = request.refund.as_ref().is_some_and(|r| r.id == news.refund);
    let (outcome, mut writes) = match moved {
        Some(t) => (RefundOutcome::Moved(id, request.status), vec![RefundNewsWrite::Transition(request, t)]),
        None if its_refund && request != before => {
            (RefundOutcome::Unchanged(id), vec![RefundNewsWrite::Request(request)])
        }
        None if its_refund || recorded => (RefundOutcome::Unchanged(id), vec![]),
        None => return None,
    };
    if its_refund {
        writes.push(RefundNewsWrite::RecordRefund(news.refund.clone(), id));
    }
    Some((outcome, writes))
}

/// A refund that is nobody's: recorded, and announced the first time it is seen.
async fn outside<R: RefundNewsReads>(
    reads: &mut R,
    news: &RefundUpdate,
    now: DateTime<Utc>,
) -> Result<(RefundOutcome, Vec<RefundNewsWrite>), R::Error> {
    let seen = reads.outside_refund(&news.refund).await?;
    let record = OutsideRefund {
        refund: news.refund.clone(),
        status: news.status.clone(),
        charge: news.charge.as_ref().map(|c| c.to_string()),
        payment_intent: news.payment_intent.as_ref().map(|p| p.to_string()),
        claimed_request: news.request_hint,
        first_seen: seen.as_ref().map_or(now, |s| s.first_seen),
        last_seen: now,
    };
    let mut writes = vec![RefundNewsWrite::Outside(record)];
    if let (None, Some(charge)) = (seen, news.charge.as_ref()) {
        for hold in reads.holds_on(charge).await? {
            if let Some(held) = reads.request(hold.request).await? {
                let announced = announce_outside(&held, news);
                writes.push(RefundNewsWrite::Transition(held, announced));
            }
        }
    }
    Ok((RefundOutcome::NotOurs(news.refund.clone()), writes))
}

/// An open request on the charge hears of a refund made outside the desk, in its thread, and
/// has the charge read again: what remains may no longer cover it.
fn announce_outside(held: &RefundRequest, news: &RefundUpdate) -> Transition {
    let notice =
        Notice::OutsideRefund { refund: news.refund.clone(), amount: news.amount, status: news.status.clone() };
    Transition {
        actor: Actor::Stripe,
        from: held.status,
        effects: vec![Effect::ThreadReply(notice), Effect::RecheckCharge],
        detail: Some(format!(
            "refund {}{} made on this charge outside refund-desk",
            news.refund,
            news.amount.map(|a| format!(" of {a}")).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::tests::{approvers, user, waiting};
    use futures::FutureExt;
    use std::collections::HashMap;
    use std::convert::Infallible;

    const INSTALL: &str = "install-a";

    /// A store in memory: what the rule reads, and nothing else.
    #[derive(Default)]
    struct Reads {
        requests: HashMap<RequestId, RefundRequest>,
        refund_ids: HashMap<RefundId, RequestId>,
        outside: HashMap<RefundId, OutsideRefund>,
    }

    impl RefundNewsReads for Reads {
        type Error = Infallible;
        async fn recorded_owner(&mut self, refund: &RefundId) -> Result<Option<RequestId>, Infallible> {
            Ok(self.refund_ids.get(refund).copied())
        }
        async fn request(&mut self, id: RequestId) -> Result<Option<RefundRequest>, Infallible> {
            Ok(self.requests.get(&id).cloned())
        }
        async fn holds_on(&mut self, charge: &ChargeId) -> Result<Vec<Hold>, Infallible> {
            let on_charge = |r: &&RefundRequest| r.charge.as_ref().is_some_and(|f| &f.charge == charge);
            Ok(self.requests.values().filter(on_charge).filter_map(RefundRequest::hold).collect())
        }
        async fn outside_refund(&mut self, refund: &RefundId) -> Result<Option<OutsideRefund>, Infallible> {
            Ok(self.outside.get(refund).cloned())
        }
    }

    fn news(refund: &str, status: &str) -> RefundUpdate {
        RefundUpdate {
            refund: RefundId::parse(refund).unwrap(),
            status: status.into(),
            failure_reason: None,
            request_hint: None,
            install: None,
            charge: Some(ChargeId::parse("ch_1").unwrap()),
            payment_intent: None,
            amount: None,
        }
    }

    fn apply(reads: &mut Reads, update: &RefundUpdate) -> (RefundOutcome, Vec<RefundNewsWrite>) {
        let Ok(answer) = apply_refund_news(reads, update, INSTALL, Utc::now()).now_or_never().expect("ready at once");
        answer
    }

    fn approved() -> RefundRequest {
        let mut r = waiting();
        r.approve(&user("UFIN"), &approvers(), &crate::domain::Approval::default(), Utc::now()).unwrap();
        r
    }

    #[test]
    fn news_of_a_refund_recorded_for_a_request_moves_that_request() {
        let mut r = approved();
        let re = RefundId::parse("re_ours").unwrap();
        r.record_submitted(re.clone(), "pending", Utc::now()).unwrap();
        let mut reads = Reads::default();
        reads.refund_ids.insert(re.clone(), r.id);
        reads.requests.insert(r.id, r.clone());
        let (outcome, writes) = apply(&mut reads, &news("re_ours", "succeeded"));
        assert_eq!(outcome, RefundOutcome::Moved(r.id, RequestStatus::Succeeded));
        assert!(
            matches!(&writes[0], RefundNewsWrite::Transition(moved, _) if moved.status == RequestStatus::Succeeded)
        );
        assert_eq!(writes[1], RefundNewsWrite::RecordRefund(re, r.id));
    }

    #[test]
    fn a_refund_named_by_its_metadata_is_claimed_by_an_approved_request_of_this_installation() {
        let r = approved();
        let mut reads = Reads::default();
        reads.requests.insert(r.id, r.clone());
        let ours =
            RefundUpdate { request_hint: Some(r.id), install: Some(INSTALL.into()), ..news("re_made", "pending") };
        let (outcome, writes) = apply(&mut reads, &ours);
        assert_eq!(outcome, RefundOutcome::Moved(r.id, RequestStatus::Pending));
        assert!(writes.contains(&RefundNewsWrite::RecordRefund(ours.refund.clone(), r.id)));
        // The same metadata from another installation names a request that is not its own.
        let theirs = RefundUpdate { install: Some("install-b".into()), ..ours };
        assert_eq!(apply(&mut reads, &theirs).0, RefundOutcome::NotOurs(theirs.refund.clone()));
    }

    #[test]
    fn a_refund_made_outside_is_announced_to_the_open_requests_on_its_charge_once() {
        let r = waiting();
        let mut reads = Reads::default();
        reads.requests.insert(r.id, r.clone());
        let dashboard = RefundUpdate { amount: r.amount, ..news("re_dashboard", "succeeded") };
        let (outcome, writes) = apply(&mut reads, &dashboard);
        assert_eq!(outcome, RefundOutcome::NotOurs(dashboard.refund.clone()));
        let RefundNewsWrite::Outside(record) = &writes[0] else { panic!("recorded first: {writes:?}") };
        let Some(RefundNewsWrite::Transition(held, announced)) = writes.get(1) else { panic!("announced: {writes:?}") };
        assert_eq!((held.id, held.status), (r.id, RequestStatus::AwaitingApproval), "announcing moves nothing");
        assert!(announced.effects.contains(&Effect::RecheckCharge));
        assert!(announced.effects.iter().any(|e| matches!(e, Effect::ThreadReply(Notice::OutsideRefund { .. }))));
        // Seen again (the event and the read-back, or a retry): refreshed, not announced again.
        reads.outside.insert(record.refund.clone(), record.clone());
        let later = Utc::now() + chrono::Duration::minutes(5);
        let Ok((_, again)) = apply_refund_news(&mut reads, &dashboard, INSTALL, later).now_or_never().expect("ready");
        assert_eq!(again.len(), 1, "{again:?}");
        let RefundNewsWrite::Outside(refreshed) = &again[0] else { panic!("{again:?}") };
        assert_eq!((refreshed.first_seen, refreshed.last_seen), (record.first_seen, later));
    }

    #[test]
    fn metadata_naming_a_request_that_cannot_take_a_refund_yet_is_a_refund_made_outside() {
        let r = waiting();
        let mut reads = Reads::default();
        reads.requests.insert(r.id, r.clone());
        let early =
            RefundUpdate { request_hint: Some(r.id), install: Some(INSTALL.into()), ..news("re_early", "succeeded") };
        let (outcome, writes) = apply(&mut reads, &early);
        assert_eq!(outcome, RefundOutcome::NotOurs(early.refund.clone()));
        assert!(matches!(&writes[0], RefundNewsWrite::Outside(o) if o.claimed_request == Some(r.id)));
        assert!(!writes.iter().any(|w| matches!(w, RefundNewsWrite::RecordRefund(..))));
    }
}
