//! Deciding a request: who may approve or deny it and in which capacity (see
//! [`Authority`]), what an approval must carry (a note, the typed amount), the senior rule,
//! and the nudges while it waits: reminders, escalation, the requester's Remind button.

use super::authority::{Authority, Capacity};
use super::ids::{RequestId, UserId};
use super::money::Money;
use super::request::{
    Actor, Decision, Effect, EmailKind, Notice, RefundRequest, RequestStatus, StateError, Transition,
};
use chrono::{DateTime, Utc};

/// What an approver gives with an approval: a note, and the amount typed in the confirmation
/// form, when the request asks for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approval {
    pub note: Option<String>,
    pub typed_amount: Option<Money>,
}

/// Why a click or a submission changed nothing; said privately to whoever tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("Only finance approvers can approve or deny refunds, so {0} is unchanged.")]
    NotAnApprover(RequestId),
    #[error("You asked for {0}, so someone else in finance has to approve or deny it.")]
    OwnRequest(RequestId),
    #[error("{id} is no longer waiting for approval: {status}{by}.")]
    AlreadyDecided { id: RequestId, status: RequestStatus, by: String },
    #[error("A denial needs a reason the requester can act on.")]
    EmptyReason,
    #[error("You already approved {0}; it needs a second, different approver.")]
    AlreadyApprovedByYou(RequestId),
    #[error("Only the person who asked for {0} can cancel it.")]
    NotYours(RequestId),
    #[error("{id} is {amount}, at or above {from}: one approval must come from a senior approver, so it is unchanged.")]
    SeniorNeeded { id: RequestId, amount: String, from: String },
    #[error("Approving {0} needs a note saying why.")]
    NoteRequired(RequestId),
    #[error("That is not the amount of {0}; type the amount shown on the card.")]
    AmountMismatch(RequestId),
    #[error("{0} needs its amount typed to approve it: click Approve on the card.")]
    AmountNotConfirmed(RequestId),
    #[error("Approvers were reminded about {id} at {last} UTC; you can remind them again after {next} UTC.")]
    TooSoon { id: RequestId, last: String, next: String },
    #[error("Only the person who asked for {0} can remind approvers about it.")]
    NotYourReminder(RequestId),
    #[error(
        "{0} is not escalated yet: escalation approvers may decide it once it has waited past the policy's escalate_after."
    )]
    NotEscalatedYet(RequestId),
}

impl RefundRequest {
    /// The amount at or above which this request needs a senior approval, if it does.
    pub fn senior_from(&self) -> Option<Money> {
        self.policy.as_ref().and_then(|p| p.senior_from)
    }

    /// Whether the approval still to come must be a senior's: the request needs one, none was
    /// given, and only one approval is left to give.
    fn senior_still_needed(&self) -> bool {
        let needed = usize::from(self.required_approvals.max(1));
        self.senior_from().is_some() && !self.approvals.iter().any(|a| a.senior) && self.approvals.len() + 1 >= needed
    }

    /// Whether approving asks for a note or the typed amount (a form, not one click).
    pub fn approval_needs_form(&self) -> bool {
        self.policy.as_ref().is_some_and(|p| p.note_required || p.confirm_amount)
    }

    fn check_open(&self) -> Result<(), DecisionError> {
        if self.status == RequestStatus::AwaitingApproval {
            return Ok(());
        }
        let by = match (&self.approved, &self.denied) {
            (Some(d), _) | (None, Some(d)) => format!(" (decided by {})", d.who()),
            _ => String::new(),
        };
        Err(DecisionError::AlreadyDecided { id: self.id, status: self.status, by })
    }

    /// In which capacity `user` may decide now, or why not. For an approval, the capacity must
    /// not have approved already (in person or through a delegate), and must be a senior's when
    /// the last approval has to be.
    fn check_decider(&self, user: &UserId, authority: &Authority, approving: bool) -> Result<Capacity, DecisionError> {
        self.check_open()?;
        if *user == self.requester {
            return Err(DecisionError::OwnRequest(self.id));
        }
        let capacities = authority.capacities(user, &self.requester, self.escalated_at.is_some());
        if capacities.is_empty() {
            if self.escalated_at.is_none() && authority.escalation.contains(user) {
                return Err(DecisionError::NotEscalatedYet(self.id));
            }
            return Err(DecisionError::NotAnApprover(self.id));
        }
        let fresh: Vec<Capacity> = capacities
            .into_iter()
            .filter(|c| {
                let principal = c.on_behalf_of.as_ref().unwrap_or(user);
                !self.approvals.iter().any(|a| a.by == *user || a.involves(principal))
            })
            .collect();
        let Some(first) = fresh.first() else { return Err(DecisionError::AlreadyApprovedByYou(self.id)) };
        if !(approving && self.senior_still_needed()) {
            return Ok(first.clone());
        }
        match fresh.iter().find(|c| c.senior) {
            Some(senior) => Ok(senior.clone()),
            None => Err(DecisionError::SeniorNeeded {
                id: self.id,
                amount: self.amount.map(|m| m.to_string()).unwrap_or_default(),
                from: self.senior_from().map(|m| m.to_string()).unwrap_or_default(),
            }),
        }
    }

    /// Whether `user` may approve this request now (asked before a form opens, so nobody gets
    /// a form they cannot submit).
    pub fn may_approve(&self, user: &UserId, authority: &Authority) -> Result<(), DecisionError> {
        self.check_decider(user, authority, true).map(|_| ())
    }

    /// Whether `user` may deny this request now (asked before the deny form opens).
    pub fn may_deny(&self, user: &UserId, authority: &Authority) -> Result<(), DecisionError> {
        self.check_decider(user, authority, false).map(|_| ())
    }

    /// An approver who is not the requester approves, with what the request asks for (a note,
    /// the typed amount). With all the approvals the policy asks for, the refund goes to
    /// Stripe; before that, the approval is recorded and shown.
    pub fn approve(
        &mut self,
        by: &UserId,
        authority: &Authority,
        given: &Approval,
        now: DateTime<Utc>,
    ) -> Result<Transition, DecisionError> {
        let capacity = self.check_decider(by, authority, true)?;
        let (confirm_amount, note_required) =
            self.policy.as_ref().map(|p| (p.confirm_amount, p.note_required)).unwrap_or_default();
        if confirm_amount {
            match given.typed_amount {
                None => return Err(DecisionError::AmountNotConfirmed(self.id)),
                Some(typed) if Some(typed) != self.amount => return Err(DecisionError::AmountMismatch(self.id)),
                Some(_) => {}
            }
        }
        let note = given.note.as_deref().map(str::trim).filter(|n| !n.is_empty()).map(str::to_string);
        if note_required && note.is_none() {
            return Err(DecisionError::NoteRequired(self.id));
        }
        let decision =
            Decision { by: by.clone(), at: now, on_behalf_of: capacity.on_behalf_of, senior: capacity.senior, note };
        let mut detail = vec![];
        if let Some(d) = &decision.on_behalf_of {
            detail.push(format!("on behalf of {d}"));
        }
        if decision.senior && self.senior_from().is_some() {
            detail.push("senior approval".to_string());
        }
        if let Some(n) = &decision.note {
            detail.push(format!("note: {n}"));
        }
        self.approvals.push(decision.clone());
        let (given, needed) = (self.approvals.len(), usize::from(self.required_approvals.max(1)));
        if needed > 1 {
            detail.insert(0, format!("approval {given} of {needed}"));
        }
        let detail = (!detail.is_empty()).then(|| detail.join("; "));
        if given < needed {
            self.updated_at = now;
            return Ok(Transition {
                actor: Actor::User(by.clone()),
                from: self.status,
                effects: vec![Effect::RefreshCard, Effect::ThreadReply(Notice::ApprovalRecorded)],
                detail,
            });
        }
        self.approved = Some(decision);
        let from = self.move_to(RequestStatus::Approved, now);
        Ok(Transition {
            actor: Actor::User(by.clone()),
            from,
            effects: vec![Effect::CreateRefund, Effect::RefreshCard, Effect::ThreadReply(Notice::Approved)],
            detail,
        })
    }

    /// An approver denies, with a reason the requester will read.
    pub fn deny(
        &mut self,
        by: &UserId,
        reason: &str,
        authority: &Authority,
        now: DateTime<Utc>,
    ) -> Result<Transition, DecisionError> {
        let capacity = self.check_decider(by, authority, false)?;
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(DecisionError::EmptyReason);
        }
        let on_behalf = capacity.on_behalf_of.clone();
        self.denied =
            Some(Decision { by: by.clone(), at: now, on_behalf_of: capacity.on_behalf_of, senior: false, note: None });
        self.deny_reason = Some(reason.to_string());
        let from = self.move_to(RequestStatus::Denied, now);
        let detail = match on_behalf {
            Some(d) => format!("{reason} (on behalf of {d})"),
            None => reason.to_string(),
        };
        Ok(Transition {
            actor: Actor::User(by.clone()),
            from,
            effects: vec![
                Effect::RefreshCard,
                Effect::ThreadReply(Notice::Denied),
                Effect::NotifyRequester(Notice::Denied),
                Effect::EmailCustomer(EmailKind::RequestDenied),
            ],
            detail: Some(detail),
        })
    }

    /// The requester withdraws the request while it waits; a later Approve changes nothing.
    pub fn withdraw(&mut self, by: &UserId, now: DateTime<Utc>) -> Result<Transition, DecisionError> {
        if *by != self.requester {
            return Err(DecisionError::NotYours(self.id));
        }
        if !matches!(self.status, RequestStatus::Requested | RequestStatus::AwaitingApproval) {
            return Err(DecisionError::AlreadyDecided { id: self.id, status: self.status, by: String::new() });
        }
        let from = self.move_to(RequestStatus::Withdrawn, now);
        // Before the check at Stripe there is no card yet to edit.
        let effects = if from == RequestStatus::AwaitingApproval {
            vec![Effect::RefreshCard, Effect::ThreadReply(Notice::Withdrawn)]
        } else {
            vec![]
        };
        Ok(Transition { actor: Actor::User(by.clone()), from, effects, detail: None })
    }

    /// Who the request waits for, to mention: when the last approval must be a senior's, the
    /// seniors; once escalated, the escalation approvers; else every approver. Never the
    /// requester or anyone who approved; with the delegates of those named.
    pub fn waiting_on(&self, authority: &Authority) -> Vec<UserId> {
        let pool: Vec<&UserId> = if self.senior_still_needed() {
            authority.seniors.iter().collect()
        } else if self.escalated_at.is_some() && !authority.escalation.is_empty() {
            authority.escalation.iter().collect()
        } else {
            authority.approvers.iter().chain(authority.seniors.iter()).collect()
        };
        self.with_delegates(pool, authority)
    }

    /// `pool`, less the requester and anyone who approved, with their delegates in force.
    fn with_delegates(&self, pool: Vec<&UserId>, authority: &Authority) -> Vec<UserId> {
        let mut named: Vec<UserId> = vec![];
        for user in pool {
            if *user == self.requester || self.approvals.iter().any(|a| a.involves(user)) {
                continue;
            }
            for who in std::iter::once(user).chain(authority.delegates_of(user)) {
                if *who != self.requester && !named.contains(who) {
                    named.push(who.clone());
                }
            }
        }
        named
    }

    /// Approvers are reminded once that the request still waits.
    pub fn remind(&mut self, authority: &Authority, now: DateTime<Utc>) -> Result<Transition, StateError> {
        self.expect(RequestStatus::AwaitingApproval, "reminded about")?;
        if self.reminded_at.is_some() {
            return Err(StateError { id: self.id, status: self.status, action: "reminded about twice" });
        }
        self.reminded_at = Some(now);
        self.updated_at = now;
        Ok(Transition {
            actor: Actor::System,
            from: self.status,
            effects: vec![Effect::ThreadReply(Notice::Reminder { approvers: self.waiting_on(authority) })],
            detail: Some("approvers reminded".into()),
        })
    }

    /// The request waited past `escalate_after`: the escalation approvers are called in, once,
    /// and may decide it from now on.
    pub fn escalate(&mut self, authority: &Authority, now: DateTime<Utc>) -> Result<Transition, StateError> {
        self.expect(RequestStatus::AwaitingApproval, "escalated")?;
        if self.escalated_at.is_some() {
            return Err(StateError { id: self.id, status: self.status, action: "escalated twice" });
        }
        self.escalated_at = Some(now);
        self.updated_at = now;
        let approvers = self.with_delegates(authority.escalation.iter().collect(), authority);
        let named = approvers.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
        Ok(Transition {
            actor: Actor::System,
            from: self.status,
            effects: vec![Effect::ThreadReply(Notice::Escalated { approvers }), Effect::RefreshCard],
            detail: Some(format!("escalated to {named}")),
        })
    }

    /// The requester presses Remind approvers: a reminder in the thread, at most once per
    /// `cooldown`.
    pub fn nudge(
        &mut self,
        by: &UserId,
        authority: &Authority,
        cooldown: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Transition, DecisionError> {
        if *by != self.requester {
            return Err(DecisionError::NotYourReminder(self.id));
        }
        self.check_open()?;
        let cooldown = chrono::Duration::from_std(cooldown).unwrap_or(chrono::Duration::hours(1));
        if let Some(last) = self.nudged_at
            && now < last + cooldown
        {
            let hm = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string();
            return Err(DecisionError::TooSoon { id: self.id, last: hm(last), next: hm(last + cooldown) });
        }
        self.nudged_at = Some(now);
        self.updated_at = now;
        Ok(Transition {
            actor: Actor::User(by.clone()),
            from: self.status,
            effects: vec![Effect::ThreadReply(Notice::Nudge { approvers: self.waiting_on(authority) })],
            detail: Some("the requester reminded approvers".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::authority::Approvers;
    use crate::domain::money::Currency;
    use crate::domain::policy::PolicyDecision;
    use crate::domain::request::tests::{approvers, one_approval, user, waiting};

    /// A waiting request whose policy asks for what `change` sets.
    fn asking(change: impl FnOnce(&mut PolicyDecision)) -> RefundRequest {
        let mut r = waiting();
        let mut policy = one_approval();
        change(&mut policy);
        r.policy = Some(policy);
        r
    }

    fn seniors() -> Authority {
        Authority { seniors: Approvers::new([user("USEN")]), ..approvers() }
    }

    #[test]
    fn at_or_above_senior_from_the_last_approval_must_be_a_seniors() {
        let usd = Currency::parse("usd").unwrap();
        let mut r = asking(|p| p.senior_from = Some(Money::new(2000, usd)));
        let refused = r.approve(&user("UFIN"), &seniors(), &Approval::default(), Utc::now()).unwrap_err();
        assert!(matches!(refused, DecisionError::SeniorNeeded { .. }), "{refused:?}");
        assert!(r.approvals.is_empty());
        r.approve(&user("USEN"), &seniors(), &Approval::default(), Utc::now()).unwrap();
        assert!(r.approved.as_ref().unwrap().senior);

        // With two approvals, an ordinary approver may give the first, not the second.
        let mut two = asking(|p| p.senior_from = Some(Money::new(2000, usd)));
        two.required_approvals = 2;
        let authority = Authority { approvers: Approvers::new([user("UFIN"), user("UFIN2")]), ..seniors() };
        two.approve(&user("UFIN"), &authority, &Approval::default(), Utc::now()).unwrap();
        let refused = two.approve(&user("UFIN2"), &authority, &Approval::default(), Utc::now());
        assert!(matches!(refused, Err(DecisionError::SeniorNeeded { .. })));
        two.approve(&user("USEN"), &authority, &Approval::default(), Utc::now()).unwrap();
        assert_eq!(two.status, RequestStatus::Approved);
    }

    #[test]
    fn the_confirmation_form_needs_the_exact_amount_and_a_note_when_asked() {
        let usd = Currency::parse("usd").unwrap();
        let mut r = asking(|p| {
            p.confirm_amount = true;
            p.note_required = true;
        });
        let note = Some("checked the ticket".to_string());
        let given = |typed: Option<u64>, note: Option<String>| Approval {
            note,
            typed_amount: typed.map(|m| Money::new(m, usd)),
        };
        let approve = |r: &mut RefundRequest, a: Approval| r.approve(&user("UFIN"), &approvers(), &a, Utc::now());
        assert_eq!(approve(&mut r, given(None, note.clone())), Err(DecisionError::AmountNotConfirmed(r.id)));
        assert_eq!(approve(&mut r, given(Some(250), note.clone())), Err(DecisionError::AmountMismatch(r.id)));
        assert_eq!(approve(&mut r, given(Some(2500), Some("   ".into()))), Err(DecisionError::NoteRequired(r.id)));
        assert!(r.approvals.is_empty(), "nothing recorded");
        let t = approve(&mut r, given(Some(2500), note)).unwrap();
        assert_eq!(t.detail.as_deref(), Some("note: checked the ticket"));
        assert_eq!(r.approved.unwrap().note.as_deref(), Some("checked the ticket"));
    }

    #[test]
    fn a_delegate_approves_on_behalf_and_the_delegator_cannot_add_a_second_approval() {
        let now = Utc::now();
        let mut r = waiting();
        r.required_approvals = 2;
        let delegation = crate::domain::Delegation {
            from: user("UFIN"),
            to: user("UDEL"),
            until: now.date_naive(),
            ends_at: now + chrono::Duration::hours(1),
            set_at: now,
        };
        let authority = Authority {
            approvers: Approvers::new([user("UFIN"), user("UFIN2")]),
            delegations: vec![delegation],
            ..Authority::default()
        };
        let t = r.approve(&user("UDEL"), &authority, &Approval::default(), now).unwrap();
        assert_eq!(t.detail.as_deref(), Some("approval 1 of 2; on behalf of UFIN"));
        assert_eq!(r.approvals[0].who(), "<@UDEL> on behalf of <@UFIN>");
        let again = r.approve(&user("UFIN"), &authority, &Approval::default(), now);
        assert_eq!(again, Err(DecisionError::AlreadyApprovedByYou(r.id)), "one approver's authority counts once");
        r.approve(&user("UFIN2"), &authority, &Approval::default(), now).unwrap();
        assert_eq!(r.status, RequestStatus::Approved);
    }

    #[test]
    fn the_requester_may_nudge_once_per_cooldown_and_only_while_it_waits() {
        let mut r = waiting();
        let now = Utc::now();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(r.nudge(&user("UFIN"), &approvers(), hour, now), Err(DecisionError::NotYourReminder(r.id)));
        let t = r.nudge(&user("UREQ"), &approvers(), hour, now).unwrap();
        assert_eq!(t.effects, vec![Effect::ThreadReply(Notice::Nudge { approvers: vec![user("UFIN")] })]);
        let soon = now + chrono::Duration::minutes(59);
        assert!(matches!(r.nudge(&user("UREQ"), &approvers(), hour, soon), Err(DecisionError::TooSoon { .. })));
        r.nudge(&user("UREQ"), &approvers(), hour, now + chrono::Duration::minutes(61)).unwrap();
        r.approve(&user("UFIN"), &approvers(), &Approval::default(), now).unwrap();
        let late = now + chrono::Duration::hours(3);
        assert!(matches!(r.nudge(&user("UREQ"), &approvers(), hour, late), Err(DecisionError::AlreadyDecided { .. })));
    }

    #[test]
    fn once_escalated_the_senior_rule_still_holds_and_reminders_name_who_can_finish() {
        let usd = Currency::parse("usd").unwrap();
        let mut r = asking(|p| p.senior_from = Some(Money::new(2000, usd)));
        let authority = Authority { escalation: Approvers::new([user("UESC")]), ..seniors() };
        assert_eq!(r.may_approve(&user("UESC"), &authority), Err(DecisionError::NotEscalatedYet(r.id)));
        r.escalate(&authority, Utc::now()).unwrap();
        let refused = r.approve(&user("UESC"), &authority, &Approval::default(), Utc::now());
        assert!(matches!(refused, Err(DecisionError::SeniorNeeded { .. })), "{refused:?}");
        assert_eq!(r.waiting_on(&authority), vec![user("USEN")], "only a senior can finish it");
        assert!(r.may_deny(&user("UESC"), &authority).is_ok(), "but the escalation approver may deny");
    }

    #[test]
    fn a_request_is_escalated_once_to_the_escalation_approvers() {
        let mut r = waiting();
        let authority = Authority { escalation: Approvers::new([user("UESC")]), ..approvers() };
        let t = r.escalate(&authority, Utc::now()).unwrap();
        assert_eq!(t.effects[0], Effect::ThreadReply(Notice::Escalated { approvers: vec![user("UESC")] }));
        assert!(r.escalate(&authority, Utc::now()).is_err(), "once");
        assert_eq!(r.waiting_on(&authority), vec![user("UESC")], "reminders now go to them");
        r.approve(&user("UESC"), &authority, &Approval::default(), Utc::now()).unwrap();
    }
}
