//! What a tenant's open context keeps in memory between requests — live sessions with their
//! users' grants, subject keys, custom field schemas — and which change drops which (the
//! machinery is `infra::caches`).

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate as _;
use custos_domain::{CustomSchema, Datasheet, FieldSchema, Organization, Record, Role, User};
use sqlx::PgPool;

use crate::infra::caches::{self, Cache, Hearing, Listener, Listening};
use crate::infra::record_feed::RecordFeed;
use crate::infra::stores::sessions::{session_cache, SessionCache};
use crate::infra::subject_keys::SubjectKeys;

/// How long a cached custom field schema is used without being read again: a bound on any
/// staleness the announcements could not prevent (they are the real guard).
pub(crate) const SCHEMA_FRESH_FOR: Duration = Duration::from_secs(60);

/// The caches of one tenant's context.
pub(crate) struct TenantCaches {
    hearing: Arc<Hearing>,
    /// Live sessions with their users and grants, by token hash.
    pub(crate) sessions: SessionCache,
    /// Custom field schemas, by datasheet.
    pub(crate) schemas: Cache<Datasheet, CustomSchema>,
    /// Keeps its own cache of unwrapped keys, dropped here with the rest.
    subject_keys: Arc<SubjectKeys>,
    /// Moves each time sessions, users, roles, grants or the organisation may have changed:
    /// what holds a session for long (a WebSocket connection) checks it again then.
    session_changes: tokio::sync::watch::Sender<u64>,
    /// Moves each time the records projection may have moved: the record feed reads then.
    record_progress: tokio::sync::watch::Sender<u64>,
}

impl TenantCaches {
    /// The caches of a context whose subject keys are `subject_keys`, working while `hearing`
    /// is on (the one `subject_keys` was made with).
    pub(crate) fn new(hearing: Arc<Hearing>, subject_keys: Arc<SubjectKeys>) -> Self {
        Self {
            sessions: session_cache(hearing.clone()),
            schemas: Cache::new(Datasheet::ALL.len(), hearing.clone()),
            subject_keys,
            hearing,
            session_changes: tokio::sync::watch::Sender::new(0),
            record_progress: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Told each time a session, user, role, grant or the organisation may have changed (on
    /// this instance, or on another as the database announces it).
    pub(crate) fn session_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.session_changes.subscribe()
    }

    /// Told each time the records projection may have moved (on this instance, or on another
    /// as the database announces it), and whenever announcements may have been missed.
    pub(crate) fn record_progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.record_progress.subscribe()
    }

    /// The feed of record changes of the context whose database `pool` reaches.
    pub(crate) fn record_feed(&self, pool: &PgPool) -> RecordFeed {
        RecordFeed::new(pool.clone(), self.record_progress(), self.hearing.clone())
    }

    fn records_moved(&self) {
        self.record_progress
            .send_modify(|generation| *generation += 1);
    }

    fn sessions_changed(&self) {
        self.sessions.clear();
        self.session_changes
            .send_modify(|generation| *generation += 1);
    }

    /// Drops what a command on an aggregate of `aggregate_type` may have changed, once the read
    /// models have applied it: this instance's own changes are seen by its next request.
    pub(crate) fn changed(&self, aggregate_type: &str) {
        if [User::TYPE, Role::TYPE, Organization::TYPE].contains(&aggregate_type) {
            self.sessions_changed();
        } else if aggregate_type == FieldSchema::TYPE {
            self.schemas.clear();
        } else if aggregate_type == Record::TYPE {
            self.records_moved();
        }
    }

    /// Starts hearing the database's announcements; the caches work from then on, until the
    /// handle is dropped.
    pub(crate) fn listen(self: &Arc<Self>, pool: &PgPool) -> Listening {
        caches::listen(pool, self.hearing.clone(), self.clone())
    }
}

impl Listener for TenantCaches {
    fn announced(&self, topic: &str) {
        match topic {
            "sessions" => self.sessions_changed(),
            "subject_keys" => self.subject_keys.forget_cached(),
            "field_schemas" => self.schemas.clear(),
            "records" => self.records_moved(),
            _ => self.drop_all(),
        }
    }

    fn drop_all(&self) {
        self.sessions_changed();
        self.subject_keys.forget_cached();
        self.schemas.clear();
        self.records_moved();
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretBox;

    use super::*;
    use crate::infra::caches::set_hearing;

    const LONG: Duration = Duration::from_secs(60);

    fn caches() -> TenantCaches {
        let hearing = Arc::new(Hearing::default());
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nowhere.invalid/none")
            .expect("a lazy pool");
        let keys = SubjectKeys::new(pool, SecretBox::new(Box::new([1; 32])), hearing.clone());
        TenantCaches::new(hearing, Arc::new(keys))
    }

    fn put_schema(caches: &TenantCaches) {
        caches.schemas.put(
            caches.schemas.ticket(),
            Datasheet::Contacts,
            CustomSchema::default(),
            LONG,
        );
    }

    #[tokio::test]
    async fn going_deaf_or_hearing_again_drops_everything() {
        let caches = caches();
        set_hearing(&caches.hearing, &caches, true);
        put_schema(&caches);
        assert!(caches.schemas.get(&Datasheet::Contacts).is_some());
        let before = caches.schemas.ticket();
        set_hearing(&caches.hearing, &caches, false);
        set_hearing(&caches.hearing, &caches, true);
        assert!(caches.schemas.get(&Datasheet::Contacts).is_none());
        caches
            .schemas
            .put(before, Datasheet::Contacts, CustomSchema::default(), LONG);
        assert!(
            caches.schemas.get(&Datasheet::Contacts).is_none(),
            "read before the gap"
        );
    }

    #[tokio::test]
    async fn announcements_and_own_changes_drop_what_they_name() {
        let caches = caches();
        set_hearing(&caches.hearing, &caches, true);
        put_schema(&caches);
        caches.announced("sessions");
        caches.changed(User::TYPE);
        caches.changed(custos_domain::Record::TYPE);
        assert!(caches.schemas.get(&Datasheet::Contacts).is_some());
        caches.announced("field_schemas");
        assert!(caches.schemas.get(&Datasheet::Contacts).is_none());

        put_schema(&caches);
        caches.changed(FieldSchema::TYPE);
        assert!(caches.schemas.get(&Datasheet::Contacts).is_none());

        put_schema(&caches);
        caches.announced("something new");
        assert!(caches.schemas.get(&Datasheet::Contacts).is_none());
    }
}
