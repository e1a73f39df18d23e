//! The blind index: finds every record about a person by email or phone without storing those
//! values for lookup in clear. Each normalised value is stored only as HMAC-SHA256 under a
//! per-tenant key derived from the master key, which never enters the database; a database
//! dump alone cannot be searched for, or reversed to, an address or number.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use custos_domain::{Email, Phone, Record, RecordEvent};
use custos_projections::{AnyEvent, ProjectedEvent, Projection};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde_json::Value;
use sha2::Sha256;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// The record fields that identify a person, and what kind of value each holds.
const INDEXED: [(&str, Kind); 4] = [
    ("email", Kind::Email),
    ("emails", Kind::Email),
    ("phone", Kind::Phone),
    ("phones", Kind::Phone),
];

#[derive(Clone, Copy)]
enum Kind {
    Email,
    Phone,
}

/// The keyed digest of a normalised email (lower-cased) or phone (`+` and digits).
#[derive(Clone)]
pub(crate) struct BlindIndex {
    key: std::sync::Arc<SecretBox<[u8; 32]>>,
}

impl BlindIndex {
    pub(crate) fn new(key: SecretBox<[u8; 32]>) -> Self {
        Self {
            key: std::sync::Arc::new(key),
        }
    }

    fn digest(&self, kind: Kind, normalised: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(match kind {
            Kind::Email => b"email:",
            Kind::Phone => b"phone:",
        });
        mac.update(normalised.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The digest of an email as a person would type it; `None` if it is not one.
    pub(crate) fn email(&self, raw: &str) -> Option<Vec<u8>> {
        let email = Email::parse(raw).ok()?;
        Some(self.digest(Kind::Email, &email.normalized()))
    }

    /// The digest of a phone number as a person would type it; `None` if it is not one.
    pub(crate) fn phone(&self, raw: &str) -> Option<Vec<u8>> {
        let phone = Phone::parse(raw).ok()?;
        Some(self.digest(Kind::Phone, phone.as_str()))
    }

    fn value_digests(&self, kind: Kind, value: &Value) -> Vec<Vec<u8>> {
        let values: Vec<&str> = match value {
            Value::String(text) => vec![text.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        values
            .into_iter()
            .filter_map(|v| match kind {
                Kind::Email => self.email(v),
                Kind::Phone => self.phone(v),
            })
            .collect()
    }

    /// The records with this digest.
    pub(crate) async fn records(&self, pool: &PgPool, digest: &[u8]) -> sqlx::Result<Vec<Uuid>> {
        sqlx::query_scalar("SELECT DISTINCT record_id FROM subject_index WHERE digest = $1")
            .bind(digest)
            .fetch_all(pool)
            .await
    }
}

/// Keeps `subject_index` in step with record events.
pub(crate) struct BlindIndexProjection(pub BlindIndex);

#[async_trait]
impl Projection for BlindIndexProjection {
    fn name(&self) -> &'static str {
        "subject_index"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<Record as Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [custos_projections::Table] {
        const { &[custos_projections::Table::new("subject_index")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::Record(record_event) = &event.event else {
            return Ok(());
        };
        let values = match record_event {
            RecordEvent::RecordCreated { fields, .. } => fields,
            RecordEvent::RecordUpdated { changes, .. } => changes,
            RecordEvent::RecordErased { .. } => {
                sqlx::query("DELETE FROM subject_index WHERE record_id = $1")
                    .bind(event.aggregate_id)
                    .execute(&mut *conn)
                    .await?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        for (field, kind) in INDEXED {
            let Some(value) = values.get(field) else {
                continue;
            };
            sqlx::query("DELETE FROM subject_index WHERE record_id = $1 AND field = $2")
                .bind(event.aggregate_id)
                .bind(field)
                .execute(&mut *conn)
                .await?;
            for digest in self.0.value_digests(kind, value) {
                sqlx::query(
                    "INSERT INTO subject_index (digest, record_id, field) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(digest)
                .bind(event.aggregate_id)
                .bind(field)
                .execute(&mut *conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM subject_index")
            .execute(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_normalised_values_and_the_key() {
        let index = BlindIndex::new(SecretBox::new(Box::new([1u8; 32])));
        assert_eq!(
            index.email("Ada@Example.org"),
            index.email(" ada@example.org ")
        );
        assert_eq!(
            index.phone("+44 20 7946 0958"),
            index.phone("+44 (20) 7946-0958")
        );
        assert_ne!(
            index.email("ada@example.org"),
            index.email("bob@example.org")
        );
        let other = BlindIndex::new(SecretBox::new(Box::new([2u8; 32])));
        assert_ne!(
            index.email("ada@example.org"),
            other.email("ada@example.org")
        );
        assert_eq!(index.email("not an email"), None);
    }
}
