//! The blind index: finds every record about a person by email or phone without storing those
//! values for lookup in clear. Each normalised value is stored only as HMAC-SHA256 under a
//! per-tenant key derived from the master key, which never enters the database; a database
//! dump alone cannot be searched for, or reversed to, an address or number.

use std::collections::BTreeMap;

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

    /// What `events`, applied in order, leave in the index.
    fn left_by(&self, events: &[&ProjectedEvent]) -> Left {
        let mut left = Left::default();
        for event in events {
            let AnyEvent::Record(record_event) = &event.event else {
                continue;
            };
            let values = match record_event {
                RecordEvent::RecordCreated { fields, .. } => fields,
                RecordEvent::RecordUpdated { changes, .. } => changes,
                RecordEvent::RecordErased { .. } => {
                    for (field, _) in INDEXED {
                        left.set.remove(&(event.aggregate_id, field));
                    }
                    left.erased.push(event.aggregate_id);
                    continue;
                }
                _ => continue,
            };
            for (field, kind) in INDEXED {
                if let Some(value) = values.get(field) {
                    left.set
                        .insert((event.aggregate_id, field), self.value_digests(kind, value));
                }
            }
        }
        left
    }

    /// The records with this digest.
    pub(crate) async fn records(&self, pool: &PgPool, digest: &[u8]) -> sqlx::Result<Vec<Uuid>> {
        sqlx::query_scalar("SELECT DISTINCT record_id FROM subject_index WHERE digest = $1")
            .bind(digest)
            .fetch_all(pool)
            .await
    }
}

/// What a run of record events leaves in the index: the records erased among them, and the
/// digests of the last value each of them set for a (record, field) after any erasure.
#[derive(Default)]
struct Left {
    erased: Vec<Uuid>,
    set: BTreeMap<(Uuid, &'static str), Vec<Vec<u8>>>,
}

/// Removes the digests of the (record, field) pairs `$1`, `$2`. The rows are found through
/// `subject_index_record` whatever the planner knows of the table: joined to the pairs alone,
/// a table not analysed yet (an organisation's first minute, a rebuild) was read whole for
/// every batch. Sent by [`remove_fields`] only.
pub const FIELDS_REMOVED: &str = "DELETE FROM subject_index AS s
     WHERE s.record_id = ANY($1)
       AND (s.record_id, s.field) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))";

/// Removes the digests of the (record, field) pairs `records`, `fields` ([`FIELDS_REMOVED`]),
/// sent unnamed so that it is planned with the batch's own values at every execution. A
/// prepared statement's generic plan, which PostgreSQL may use from the sixth execution on a
/// connection, knows neither the batch nor the table: prepared, this delete took 0.7 s for
/// each batch of 5,000 after the first few when an import filled the index (five of the
/// rebuild's ten seconds); unnamed, 22 ms.
pub async fn remove_fields(
    conn: &mut PgConnection,
    records: &[Uuid],
    fields: &[&str],
) -> sqlx::Result<()> {
    sqlx::query(FIELDS_REMOVED)
        .bind(records)
        .bind(fields)
        .persistent(false)
        .execute(conn)
        .await?;
    Ok(())
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
        self.apply_all(conn, &[event]).await
    }

    /// What the events leave, in at most three statements: the rows of records erased among
    /// them removed, then every (record, field) they set replaced by its last value's digests.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        events: &[&ProjectedEvent],
    ) -> sqlx::Result<()> {
        let left = self.0.left_by(events);
        if !left.erased.is_empty() {
            sqlx::query("DELETE FROM subject_index WHERE record_id = ANY($1)")
                .bind(&left.erased)
                .execute(&mut *conn)
                .await?;
        }
        if left.set.is_empty() {
            return Ok(());
        }
        let (records, fields): (Vec<Uuid>, Vec<&str>) = left.set.keys().copied().unzip();
        remove_fields(&mut *conn, &records, &fields).await?;
        let mut rows: (Vec<Vec<u8>>, Vec<Uuid>, Vec<&str>) = Default::default();
        for ((record, field), digests) in left.set {
            for digest in digests {
                rows.0.push(digest);
                rows.1.push(record);
                rows.2.push(field);
            }
        }
        if !rows.0.is_empty() {
            sqlx::query(
                "INSERT INTO subject_index (digest, record_id, field)
                 SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(rows.0)
            .bind(rows.1)
            .bind(rows.2)
            .execute(&mut *conn)
            .await?;
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

    fn event(record: Uuid, sequence: i64, event: RecordEvent) -> ProjectedEvent {
        ProjectedEvent {
            global_position: sequence,
            aggregate_id: record,
            sequence,
            recorded_at: chrono::Utc::now(),
            metadata: custos_domain::EventMetadata::new(
                custos_domain::Actor::User(Uuid::nil()),
                Uuid::nil(),
            ),
            event: AnyEvent::Record(event),
        }
    }

    fn values(pairs: &[(&str, Value)]) -> custos_domain::record::Fields {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn a_run_of_events_leaves_the_last_value_of_each_field_after_any_erasure() {
        use custos_domain::Datasheet::Employees;
        let index = BlindIndex::new(SecretBox::new(Box::new([1u8; 32])));
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let events = [
            event(
                ada,
                1,
                RecordEvent::RecordCreated {
                    datasheet: Employees,
                    fields: values(&[
                        ("email", "ada@example.org".into()),
                        ("phone", "+44 20 7946 0958".into()),
                    ]),
                    hired_from: None,
                    effective_from: None,
                },
            ),
            event(
                bob,
                1,
                RecordEvent::RecordCreated {
                    datasheet: Employees,
                    fields: values(&[("email", "bob@example.org".into())]),
                    hired_from: None,
                    effective_from: None,
                },
            ),
            event(
                ada,
                2,
                RecordEvent::RecordUpdated {
                    datasheet: Employees,
                    changes: values(&[("email", "ada@lovelace.example".into())]),
                    effective_from: None,
                },
            ),
            event(
                bob,
                2,
                RecordEvent::RecordErased {
                    datasheet: Employees,
                    fields: vec!["email".into()],
                    ground: custos_domain::record::ErasureGround::Objection,
                    note: None,
                },
            ),
            event(
                ada,
                3,
                RecordEvent::RecordUpdated {
                    datasheet: Employees,
                    changes: values(&[("phone", Value::Null), ("first_name", "Ada".into())]),
                    effective_from: None,
                },
            ),
        ];
        let refs: Vec<&ProjectedEvent> = events.iter().collect();
        let left = index.left_by(&refs);
        assert_eq!(left.erased, vec![bob]);
        let set: Vec<_> = left.set.into_iter().collect();
        assert_eq!(
            set,
            vec![
                (
                    (ada, "email"),
                    vec![index.email("ada@lovelace.example").unwrap()]
                ),
                ((ada, "phone"), Vec::new()),
            ]
        );
    }

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
