//! The `consents` read model: each subject's consent register as it stands — per purpose, the
//! legal basis, its expiry and its withdrawal. Fed by the subjects' `consent` streams and by
//! job applicants' `talent_pool_until`, which is their talent-pool consent. Erasing a record
//! removes its rows.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use custos_domain::consent::TALENT_POOL;
use custos_domain::record::Fields;
use custos_domain::{ConsentEvent, Consents, Datasheet, LegalBasis, Record, RecordEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{AnyEvent, ProjectedEvent, Projection};

const TALENT_POOL_FIELD: &str = "talent_pool_until";

/// Projects Consents events, and applicants' talent-pool dates, into `consents`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsentsProjection;

async fn give(
    conn: &mut PgConnection,
    event: &ProjectedEvent,
    datasheet: Datasheet,
    purpose: &str,
    legal_basis: LegalBasis,
    expires_on: Option<NaiveDate>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO consents (subject_id, purpose, datasheet, legal_basis, given_at, expires_on)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (subject_id, purpose) DO UPDATE
            SET legal_basis = $4, given_at = $5, expires_on = $6, withdrawn_at = NULL",
    )
    .bind(event.aggregate_id)
    .bind(purpose)
    .bind(datasheet.as_str())
    .bind(legal_basis.as_str())
    .bind(event.recorded_at)
    .bind(expires_on)
    .execute(conn)
    .await?;
    Ok(())
}

async fn withdraw(
    conn: &mut PgConnection,
    event: &ProjectedEvent,
    purpose: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE consents SET withdrawn_at = $3
         WHERE subject_id = $1 AND purpose = $2 AND withdrawn_at IS NULL",
    )
    .bind(event.aggregate_id)
    .bind(purpose)
    .bind(event.recorded_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// An applicant's talent-pool date as the record event carries it: `Some(None)` when cleared,
/// `None` when the event does not touch it (or holds an erased value).
fn talent_pool(fields: &Fields) -> Option<Option<NaiveDate>> {
    match fields.get(TALENT_POOL_FIELD)? {
        Value::Null => Some(None),
        Value::String(date) => date.parse().ok().map(Some),
        _ => None,
    }
}

#[async_trait]
impl Projection for ConsentsProjection {
    fn name(&self) -> &'static str {
        "consents"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[
            <Consents as cqrs_es::Aggregate>::TYPE,
            <Record as cqrs_es::Aggregate>::TYPE,
        ]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("consents")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        match &event.event {
            AnyEvent::Consent(ConsentEvent::ConsentGiven {
                datasheet,
                purpose,
                legal_basis,
                expires_on,
                ..
            }) => give(conn, event, *datasheet, purpose, *legal_basis, *expires_on).await,
            AnyEvent::Consent(ConsentEvent::ConsentWithdrawn { purpose, .. }) => {
                withdraw(conn, event, purpose).await
            }
            AnyEvent::Record(
                RecordEvent::RecordCreated {
                    datasheet: Datasheet::Applicants,
                    fields,
                    ..
                }
                | RecordEvent::RecordUpdated {
                    datasheet: Datasheet::Applicants,
                    changes: fields,
                    ..
                },
            ) => match talent_pool(fields) {
                Some(Some(until)) => {
                    give(
                        conn,
                        event,
                        Datasheet::Applicants,
                        TALENT_POOL,
                        LegalBasis::Consent,
                        Some(until),
                    )
                    .await
                }
                Some(None) => withdraw(conn, event, TALENT_POOL).await,
                None => Ok(()),
            },
            AnyEvent::Record(RecordEvent::RecordErased { .. }) => {
                sqlx::query("DELETE FROM consents WHERE subject_id = $1")
                    .bind(event.aggregate_id)
                    .execute(conn)
                    .await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM consents").execute(conn).await?;
        Ok(())
    }
}

/// One purpose of a subject's register as it stands.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ConsentRow {
    pub subject_id: Uuid,
    pub purpose: String,
    pub datasheet: String,
    pub legal_basis: String,
    pub given_at: DateTime<Utc>,
    pub expires_on: Option<NaiveDate>,
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl ConsentRow {
    /// Whether the basis holds on `today`.
    pub fn holds_on(&self, today: NaiveDate) -> bool {
        self.withdrawn_at.is_none() && self.expires_on.is_none_or(|last| today <= last)
    }
}

/// The registers of `subjects`, by subject and purpose.
pub async fn of_subjects<'e>(
    db: impl PgExecutor<'e>,
    subjects: &[Uuid],
) -> sqlx::Result<Vec<ConsentRow>> {
    sqlx::query_as(
        "SELECT subject_id, purpose, datasheet, legal_basis, given_at, expires_on, withdrawn_at
         FROM consents WHERE subject_id = ANY($1) ORDER BY subject_id, purpose",
    )
    .bind(subjects)
    .fetch_all(db)
    .await
}
