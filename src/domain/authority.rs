//! Who may decide a request, and in whose name: approvers; senior approvers, one of whom must
//! approve at or above the policy's `senior_from`; escalation approvers, once a request has
//! waited past `escalate_after`; and delegates, who act on behalf of an approver until the end
//! of a day. Delegation does not chain: a delegate acts with the delegator's own roles only.

use super::ids::UserId;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The users who may approve or deny.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approvers(BTreeSet<UserId>);

impl Approvers {
    pub fn new(users: impl IntoIterator<Item = UserId>) -> Self {
        Approvers(users.into_iter().collect())
    }
    pub fn contains(&self, user: &UserId) -> bool {
        self.0.contains(user)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &UserId> {
        self.0.iter()
    }
}

/// An approver's decisions handed to someone else until the end of `until` (in the policy's
/// time zone), which is `ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub from: UserId,
    pub to: UserId,
    pub until: NaiveDate,
    pub ends_at: DateTime<Utc>,
    pub set_at: DateTime<Utc>,
}

impl Delegation {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now < self.ends_at
    }
}

/// Everyone who may decide, as the desk knows them now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority {
    pub approvers: Approvers,
    /// May give the senior approval; they are approvers too.
    pub seniors: Approvers,
    /// May decide requests once they are escalated.
    pub escalation: Approvers,
    /// Delegations in force now.
    pub delegations: Vec<Delegation>,
}

/// In what capacity someone decides: on their own account or on behalf of a delegator, and
/// whether that counts as the senior approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub on_behalf_of: Option<UserId>,
    pub senior: bool,
}

impl Authority {
    /// Only these approvers; no seniors, no escalation, no delegation.
    pub fn of(approvers: Approvers) -> Self {
        Authority { approvers, ..Authority::default() }
    }

    /// Whether `user` is an approver (or a senior one), so may delegate their approvals.
    /// Escalation approvers decide only what was escalated to them, and do not delegate that.
    pub fn may_delegate(&self, user: &UserId) -> bool {
        self.approvers.contains(user) || self.seniors.contains(user)
    }

    /// Whether `user` has a queue of requests to decide in App Home: as an approver, a senior,
    /// an escalation approver (what was escalated) or a delegate.
    pub fn may_see_queue(&self, user: &UserId) -> bool {
        self.may_delegate(user) || self.escalation.contains(user) || self.delegates_to(user).next().is_some()
    }

    /// Whether `user`, on their own account, may decide a request (`escalated` or not).
    fn decides_itself(&self, user: &UserId, escalated: bool) -> bool {
        self.approvers.contains(user) || self.seniors.contains(user) || (escalated && self.escalation.contains(user))
    }

    /// Every capacity in which `user` may decide a request made by `requester`: their own
    /// first, then on behalf of each delegator in force. Never on behalf of the requester: that
    /// would be the requester approving their own request by proxy.
    pub fn capacities(&self, user: &UserId, requester: &UserId, escalated: bool) -> Vec<Capacity> {
        let mut all = vec![];
        if self.decides_itself(user, escalated) {
            all.push(Capacity { on_behalf_of: None, senior: self.seniors.contains(user) });
        }
        for d in self.delegations.iter().filter(|d| d.to == *user && d.from != *requester) {
            if self.decides_itself(&d.from, escalated) {
                all.push(Capacity { on_behalf_of: Some(d.from.clone()), senior: self.seniors.contains(&d.from) });
            }
        }
        all
    }

    /// Whether a delegator in force hands `user` decisions (for App Home and private notes).
    pub fn delegates_to(&self, user: &UserId) -> impl Iterator<Item = &Delegation> {
        self.delegations.iter().filter(move |d| d.to == *user)
    }

    /// The delegates of `approver` now.
    pub fn delegates_of<'a>(&'a self, approver: &'a UserId) -> impl Iterator<Item = &'a UserId> {
        self.delegations.iter().filter(move |d| d.from == *approver).map(|d| &d.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::tests::user;

    fn delegation(from: &str, to: &str) -> Delegation {
        let now = Utc::now();
        Delegation {
            from: user(from),
            to: user(to),
            until: now.date_naive(),
            ends_at: now + chrono::Duration::hours(1),
            set_at: now,
        }
    }

    #[test]
    fn a_delegate_acts_with_the_delegators_own_roles_and_never_for_the_requester() {
        let requester = user("UREQ");
        let authority = Authority {
            approvers: Approvers::new([user("UFIN"), user("UREQ")]),
            seniors: Approvers::new([user("USEN")]),
            delegations: vec![delegation("USEN", "UDEL"), delegation("UREQ", "UDEL2"), delegation("UDEL", "UCHAIN")],
            ..Authority::default()
        };
        assert_eq!(
            authority.capacities(&user("UDEL"), &requester, false),
            vec![Capacity { on_behalf_of: Some(user("USEN")), senior: true }]
        );
        assert!(authority.capacities(&user("UDEL2"), &requester, false).is_empty(), "on behalf of the requester");
        assert!(authority.capacities(&user("UCHAIN"), &requester, false).is_empty(), "delegation does not chain");
    }

    #[test]
    fn escalation_approvers_decide_only_escalated_requests() {
        let requester = user("UREQ");
        let authority = Authority { escalation: Approvers::new([user("UESC")]), ..Authority::default() };
        assert!(authority.capacities(&user("UESC"), &requester, false).is_empty());
        assert_eq!(
            authority.capacities(&user("UESC"), &requester, true),
            vec![Capacity { on_behalf_of: None, senior: false }]
        );
        assert!(!authority.may_delegate(&user("UESC")), "escalation approvers do not delegate");
    }
}
