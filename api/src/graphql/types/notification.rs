//! A notification as administrators see it: what it says, to whom (a user or a record, never
//! an address) and how its delivery went.

use async_graphql::{Enum, Object, ID};
use chrono::{DateTime, Utc};

use crate::infra::notifications::outbox::Notification;

/// What a notification tells.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub(crate) enum NotificationKind {
    /// The trial ends within 7 days, or within 1.
    TrialEnding,
    TrialExtended,
    /// The trial ended without a plan: the deletion date.
    TrialEnded,
    PlanChosen,
    /// Storage reached 80 % of the plan's.
    StorageNearLimit,
    StorageLimitReached,
    /// A further overage step beyond the plan's storage began (billable).
    StorageOverage,
    Suspended,
    Resumed,
    CancellationScheduled,
    CancellationWithdrawn,
    /// The subscription ended: the migration window's end.
    SubscriptionEnded,
    /// The organisation's deletion is within 7 days.
    DeletionApproaching,
    /// The organisation was purged (sent once it was).
    Purged,
    /// A breach notice to a person an incident affected (GDPR Art. 34).
    Breach,
}

const KINDS: [(NotificationKind, &str); 15] = [
    (NotificationKind::TrialEnding, "trial_ending"),
    (NotificationKind::TrialExtended, "trial_extended"),
    (NotificationKind::TrialEnded, "trial_ended"),
    (NotificationKind::PlanChosen, "plan_chosen"),
    (NotificationKind::StorageNearLimit, "storage_near_limit"),
    (
        NotificationKind::StorageLimitReached,
        "storage_limit_reached",
    ),
    (NotificationKind::StorageOverage, "storage_overage"),
    (NotificationKind::Suspended, "suspended"),
    (NotificationKind::Resumed, "resumed"),
    (
        NotificationKind::CancellationScheduled,
        "cancellation_scheduled",
    ),
    (
        NotificationKind::CancellationWithdrawn,
        "cancellation_withdrawn",
    ),
    (NotificationKind::SubscriptionEnded, "subscription_ended"),
    (
        NotificationKind::DeletionApproaching,
        "deletion_approaching",
    ),
    (NotificationKind::Purged, "purged"),
    (NotificationKind::Breach, "breach"),
];

impl NotificationKind {
    pub(crate) fn as_str(self) -> &'static str {
        KINDS
            .iter()
            .find(|(kind, _)| *kind == self)
            .map_or("", |(_, name)| name)
    }

    fn parse(name: &str) -> Option<Self> {
        KINDS
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(kind, _)| *kind)
    }
}

/// Where a notification's delivery is.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub(crate) enum NotificationStatus {
    /// Waiting for its (next) attempt — or for a mail server to be configured (`lastError`).
    Pending,
    /// The mail server accepted it.
    Sent,
    /// Given up after its last attempt (a dead letter): `lastError` says why.
    Dead,
    /// Not sent: nobody to send it to (an erased person, a record without an email address,
    /// a user no longer an administrator); `lastError` says which.
    Cancelled,
}

impl NotificationStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(name: &str) -> Self {
        match name {
            "sent" => Self::Sent,
            "dead" => Self::Dead,
            "cancelled" => Self::Cancelled,
            _ => Self::Pending,
        }
    }
}

/// From 9999-01-01: a notification held until what it announces happened.
const HELD: i64 = 253_370_764_800;

/// One notification owed to someone, and its delivery.
pub(crate) struct NotificationNode(pub(crate) Notification);

#[Object(name = "Notification")]
impl NotificationNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// `None` only for a kind this version does not know.
    async fn kind(&self) -> Option<NotificationKind> {
        NotificationKind::parse(&self.0.kind)
    }
    /// How it is sent: `email`.
    async fn channel(&self) -> &str {
        &self.0.channel
    }
    /// The administrator it goes to.
    async fn recipient_user_id(&self) -> Option<ID> {
        self.recipient("user")
    }
    /// The record of the person it goes to (a breach notice): the address is the record's
    /// as it is when the notice is sent.
    async fn recipient_record_id(&self) -> Option<ID> {
        self.recipient("record")
    }
    /// The incident of a breach notice.
    async fn incident_id(&self) -> Option<ID> {
        self.0
            .cause
            .strip_prefix("incident:")
            .map(|id| ID(id.to_owned()))
    }
    async fn status(&self) -> NotificationStatus {
        NotificationStatus::parse(&self.0.status)
    }
    /// Attempts so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }
    /// When it is tried next (pending only; `None` while a purge notice waits for the purge).
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        (self.0.status == "pending" && self.0.next_attempt_at.timestamp() < HELD)
            .then_some(self.0.next_attempt_at)
    }
    /// Why the last attempt failed, or why it was not sent.
    async fn last_error(&self) -> Option<&str> {
        self.0.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When the mail server accepted it.
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.0.sent_at
    }
}

impl NotificationNode {
    fn recipient(&self, kind: &str) -> Option<ID> {
        let (k, id) = self.0.recipient.split_once(':')?;
        (k == kind).then(|| ID(id.to_owned()))
    }
}
