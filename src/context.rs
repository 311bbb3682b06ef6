//! The context every inbound adapter, job and periodic task works with: the settings, the
//! store, the Slack, Stripe and mail clients, the approvers as last read, the clock, and this
//! replica's identity for leases. Its own module, so the adapters, the worker and `app` (which
//! builds it) depend on it and not on one another.

use crate::config::Settings;
use crate::domain::{Approvers, Authority, Delegation, UserId};
use crate::email::Mailer;
use crate::slack::SlackApi;
use crate::storage::{Store, StoreError};
use crate::stripe::StripeClient;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The time, as the desk sees it: the system clock, moved forward only by tests.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves the desk's time forward (tests of reminders and expiry).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis() as i64, Ordering::Relaxed);
    }
}

/// What every handler and job can reach.
pub struct AppContext {
    pub settings: Settings,
    pub store: Store,
    pub slack: SlackApi,
    pub stripe: StripeClient,
    /// `None` when `SMTP_URL` is not set.
    pub mailer: Option<Mailer>,
    /// `None` when `REFUND_DESK_CALLBACK_URL` is not set.
    pub callback: Option<crate::callback::CallbackClient>,
    /// Set while the job runner runs; `/readyz` reads it.
    pub workers_running: AtomicBool,
    /// Who holds each approving role now: the people named in the settings plus the members
    /// of each role's group. A std lock: read and replaced whole, never held across an await.
    roster: std::sync::RwLock<Roster>,
    pub clock: Clock,
    /// This process among the replicas on one database: who holds a lease.
    pub replica: String,
}

/// The approving roles, as last read.
#[derive(Debug, Clone, Default)]
struct Roster {
    approvers: Approvers,
    seniors: Approvers,
    escalation: Approvers,
}

/// Which role a user group gives.
#[derive(Debug, Clone, Copy)]
enum RoleKind {
    Approver,
    Senior,
    Escalation,
}

/// Where a delegation is kept among the shared values, by delegator.
pub const DELEGATION_PREFIX: &str = "delegation/";

/// The leases periodic work runs under (see [`AppContext::holds_lease`]).
pub const LEASES: [&str; 4] = [EVENTS_LEASE, APPROVERS_LEASE, PRUNE_LEASE, DIGEST_LEASE];
pub const EVENTS_LEASE: &str = "stripe_events";
pub const APPROVERS_LEASE: &str = "approver_group";
pub const PRUNE_LEASE: &str = "prune_event_ids";
/// The daily digest is posted under it.
pub const DIGEST_LEASE: &str = "daily_digest";
/// Where the approver group's holder shares the members it read, by group: replicas started
/// with another group (a deploy that changes it) never take each other's members.
fn approvers_shared(group: &str) -> String {
    format!("approver_group_members/{group}")
}

/// How long a lease on work done every `every` lasts: two rounds, so the holder renews it in
/// time, and another replica takes over within two rounds of the holder's death.
pub fn lease_span(every: Duration) -> Duration {
    (every * 2).max(Duration::from_secs(30))
}

impl AppContext {
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the desk's time forward and wakes the job runner to look again.
    pub fn advance_clock(&self, by: Duration) {
        self.clock.advance(by);
        self.store.jobs_added().notify_one();
    }

    fn roster(&self) -> Roster {
        self.roster.read().map(|a| a.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Everyone who may approve an ordinary request on their own account (approvers and
    /// senior approvers), as last read.
    pub fn approvers(&self) -> Approvers {
        let roster = self.roster();
        Approvers::new(roster.approvers.iter().chain(roster.seniors.iter()).cloned())
    }

    /// Everyone who may decide, and the delegations in force now, read from the store (a
    /// delegation set on another replica counts at once).
    pub async fn authority(&self) -> Result<Authority, StoreError> {
        let now = self.now();
        let delegations = self
            .store
            .shared_values(DELEGATION_PREFIX)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Option<Delegation>>(&v).ok().flatten())
            .filter(|d| d.is_active(now))
            .collect();
        let roster = self.roster();
        Ok(Authority {
            approvers: roster.approvers,
            seniors: roster.seniors,
            escalation: roster.escalation,
            delegations,
        })
    }

    /// The role groups configured, with the role each gives.
    fn groups(&self) -> Vec<(RoleKind, String)> {
        let slack = &self.settings.slack;
        [
            (RoleKind::Approver, slack.approver_group.clone()),
            (RoleKind::Senior, slack.seniors.group.clone()),
            (RoleKind::Escalation, slack.escalation.group.clone()),
        ]
        .into_iter()
        .filter_map(|(kind, group)| Some((kind, group?)))
        .collect()
    }

    /// Whether this replica holds the lease `name` for the next `span`, taking or renewing it.
    /// On a store error it does not: the work waits for the next round rather than running
    /// twice.
    pub async fn holds_lease(&self, name: &str, span: Duration) -> bool {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(span).unwrap_or(chrono::Duration::seconds(60));
        match self.store.take_lease(name, &self.replica, now, until).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, lease = name, "could not take or renew a lease");
                false
            }
        }
    }

    /// Reads the role groups from Slack again and shares the members with the other replicas;
    /// on failure keeps the last members read.
    pub async fn refresh_approvers(&self) {
        for (kind, group) in self.groups() {
            match self.slack.usergroup_members(&group.as_str().into()).await {
                Ok(members) => {
                    let members: Vec<UserId> = members.iter().filter_map(|m| UserId::parse(&m.0).ok()).collect();
                    self.use_group(kind, &members);
                    let shared = serde_json::to_string(&members).unwrap_or_default();
                    if let Err(e) = self.store.set_shared_value(&approvers_shared(&group), &shared).await {
                        tracing::warn!(error = %e, "could not share a user group's members with the other replicas");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, group = %group, "could not read a user group; keeping the last members read");
                }
            }
        }
    }

    /// Takes the role groups' members as another replica last read them; reads Slack itself
    /// when none has yet.
    pub(crate) async fn load_shared_approvers(&self) {
        let mut unread = false;
        for (kind, group) in self.groups() {
            match self.store.shared_value(&approvers_shared(&group)).await {
                Ok(shared) => match shared.and_then(|s| serde_json::from_str::<Vec<UserId>>(&s).ok()) {
                    Some(members) => self.use_group(kind, &members),
                    None => unread = true,
                },
                Err(e) => tracing::warn!(error = %e, "could not read a user group's members; keeping the last read"),
            }
        }
        if unread {
            self.refresh_approvers().await;
        }
    }

    fn use_group(&self, kind: RoleKind, members: &[UserId]) {
        let slack = &self.settings.slack;
        let named = match kind {
            RoleKind::Approver => &slack.approvers,
            RoleKind::Senior => &slack.seniors.named,
            RoleKind::Escalation => &slack.escalation.named,
        };
        let all = Approvers::new(named.iter().cloned().chain(members.iter().cloned()));
        tracing::debug!(role = ?kind, people = all.iter().count(), "user group members in use");
        if let Ok(mut roster) = self.roster.write() {
            match kind {
                RoleKind::Approver => roster.approvers = all,
                RoleKind::Senior => roster.seniors = all,
                RoleKind::Escalation => roster.escalation = all,
            }
        }
    }

    /// Tells `user` something privately: an ephemeral message in `channel`, or a direct
    /// message when there is no channel (a click in App Home). It does not hold up the caller
    /// and is not durable: these are answers to a click, worthless minutes later.
    pub fn tell_privately(
        self: &Arc<Self>,
        channel: Option<slack_morphism::SlackChannelId>,
        user: UserId,
        text: String,
    ) {
        let ctx = self.clone();
        tokio::spawn(async move {
            let sent = match &channel {
                Some(channel) => ctx.slack.post_ephemeral(channel, &(&user).into(), text).await,
                None => ctx
                    .slack
                    .post_message(&crate::slack::direct_message(&user), crate::slack::views::text_message(text), None)
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = sent {
                tracing::warn!(error = %e, slack_user = %user, "could not send a private note");
            }
        });
    }
}

impl AppContext {
    /// The context of a desk about to start: approvers as configured (the group is read by the
    /// approver refresh), the system clock, a fresh replica id.
    pub fn new(
        settings: Settings,
        store: Store,
        slack: SlackApi,
        stripe: StripeClient,
        mailer: Option<Mailer>,
    ) -> Self {
        let roster = std::sync::RwLock::new(Roster {
            approvers: settings.slack.approvers.clone(),
            seniors: settings.slack.seniors.named.clone(),
            escalation: settings.slack.escalation.named.clone(),
        });
        let callback = settings.api.callback.as_ref().map(|c| {
            crate::callback::CallbackClient::new(c).expect("the HTTP client for callbacks could not be set up")
        });
        AppContext {
            settings,
            store,
            slack,
            stripe,
            mailer,
            callback,
            workers_running: AtomicBool::new(false),
            roster,
            clock: Clock::default(),
            replica: hex::encode(rand::random::<[u8; 8]>()),
        }
    }
}
