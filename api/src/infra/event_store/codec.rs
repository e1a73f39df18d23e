//! The seam where personal content is sealed and opened: every event written or read passes
//! through [`EventCodec`]. What is personal is the domain's word (`custos_domain::personal`).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use custos_domain::personal::{self, ErasedReading};
use secrecy::ExposeSecret;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::infra::subject_keys::{self, KeyError, Offer, SubjectKeys};

/// Turns domain payloads into stored payloads and back. Events of data subjects (records and
/// users) are sealed with the subject's own key (XChaCha20-Poly1305, bound to the event's
/// stream and sequence): what stays in clear is the event type (a column), the metadata (ids
/// only), the datasheet and the names of the fields the event carries. Writes, aggregate loads,
/// projections and history all pass through here, so they all see the same opened events.
#[derive(Clone)]
pub struct EventCodec {
    keys: Arc<SubjectKeys>,
    /// False only in `custos-bench --suite privacy` (the `testing` feature), which measures what sealing costs by
    /// writing the same commands unsealed into its own scratch tenant.
    seal: bool,
}

impl std::fmt::Debug for EventCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventCodec")
    }
}

fn unknown(err: impl std::error::Error + Send + Sync + 'static) -> PersistenceError {
    PersistenceError::UnknownError(Box::new(err))
}

fn key_error(err: KeyError) -> PersistenceError {
    match err {
        KeyError::Database(err) => PersistenceError::ConnectionError(Box::new(err)),
        other => unknown(other),
    }
}

/// What stays readable of a sealed payload: its datasheet, the names of its fields, and the day
/// a change takes effect (so an erased person's records still stand in time, without values).
fn clear_summary(payload: &Value) -> Value {
    let Some((_, body)) = payload.as_object().and_then(|m| m.iter().next()) else {
        return Value::Null;
    };
    let Some(body) = body.as_object() else {
        return Value::Null;
    };
    let mut clear = serde_json::Map::new();
    if let Some(datasheet) = body.get("datasheet") {
        clear.insert("datasheet".into(), datasheet.clone());
    }
    if let Some(day) = body.get("effective_from") {
        clear.insert("effective_from".into(), day.clone());
    }
    let nested: Vec<&str> = ["fields", "changes"]
        .iter()
        .filter_map(|key| body.get(*key).and_then(Value::as_object))
        .flat_map(|map| map.keys().map(String::as_str))
        .collect();
    let names: Vec<Value> = if nested.is_empty() {
        body.keys()
            .filter(|k| !matches!(k.as_str(), "datasheet" | "effective_from"))
            .map(|k| Value::String(k.clone()))
            .collect()
    } else {
        nested
            .into_iter()
            .map(|k| Value::String(k.to_owned()))
            .collect()
    };
    clear.insert("fields".into(), Value::Array(names));
    Value::Object(clear)
}

fn binding(event: &SerializedEvent) -> Vec<u8> {
    format!(
        "custos/event/{}/{}/{}",
        event.aggregate_type, event.aggregate_id, event.sequence
    )
    .into_bytes()
}

/// The subject whose key seals this event, if its payload has content to seal.
fn subject_of(event: &SerializedEvent) -> Option<Uuid> {
    if !event.payload.is_object()
        || !personal::carries_personal_values(&event.aggregate_type, &event.event_type)
    {
        return None;
    }
    Uuid::try_parse(&event.aggregate_id).ok()
}

/// What a record event whose subject was erased reads as: the same event, every value it
/// carried replaced by the erased marker. `None` for events that cannot be read without their
/// values.
fn erased_payload(event: &SerializedEvent) -> Option<Value> {
    let clear = event.payload.get("clear")?;
    let names = clear.get("fields")?.as_array()?;
    let values: serde_json::Map<String, Value> = names
        .iter()
        .filter_map(Value::as_str)
        .map(|name| (name.to_owned(), custos_domain::record::erased_marker()))
        .collect();
    match personal::erased_reading(&event.aggregate_type, &event.event_type)? {
        // A user's or a register's events cannot stand without their values.
        ErasedReading::Redacted => Some(Value::String("Redacted".into())),
        ErasedReading::ValuesMarked(key) => {
            let datasheet = clear.get("datasheet")?.clone();
            let mut body = serde_json::json!({ "datasheet": datasheet, key: values });
            if let Some(day) = clear.get("effective_from") {
                body["effective_from"] = day.clone();
            }
            Some(serde_json::json!({ event.event_type.clone(): body }))
        }
    }
}

fn sealed_part(event: &SerializedEvent) -> Option<&str> {
    event.payload.get("sealed").and_then(Value::as_str)
}

/// The subjects whose keys seal these events, each once.
fn subjects_of(events: &[SerializedEvent]) -> Vec<Uuid> {
    let mut subjects: Vec<Uuid> = events.iter().filter_map(subject_of).collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

/// The subjects whose keys open these events, each once.
fn sealed_subjects(events: &[SerializedEvent]) -> Vec<Uuid> {
    let mut subjects: Vec<Uuid> = events
        .iter()
        .filter(|e| sealed_part(e).is_some())
        .filter_map(|e| Uuid::try_parse(&e.aggregate_id).ok())
        .collect();
    subjects.sort();
    subjects.dedup();
    subjects
}

impl EventCodec {
    pub fn new(keys: Arc<SubjectKeys>) -> Self {
        Self { keys, seal: true }
    }

    /// A codec that writes events unsealed (and reads like any other): for the benchmark
    /// that measures sealing's cost, never for a tenant's own event store.
    #[cfg(feature = "testing")]
    pub fn unsealed(keys: Arc<SubjectKeys>) -> Self {
        Self { keys, seal: false }
    }

    /// Domain payloads → stored payloads.
    pub async fn seal_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let subjects = subjects_of(&events);
        if subjects.is_empty() || !self.seal {
            return Ok(events);
        }
        let keys = self.keys.for_writing(&subjects).await.map_err(key_error)?;
        Self::seal_with(events, &keys)
    }

    /// Domain payloads → stored payloads, for one append. When every subject the events seal
    /// for begins its stream with them, they are sealed without a statement, with keys
    /// offered for the append's own statement to store ([`SubjectKeys::offer`]: a new record
    /// costs one statement and one commit, not two); the offer is answered with them. Other
    /// events are sealed as [`Self::seal_all`] seals them.
    pub(crate) async fn seal_for_append(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<(Vec<SerializedEvent>, Option<Offer>), PersistenceError> {
        let subjects = subjects_of(&events);
        if subjects.is_empty() || !self.seal {
            return Ok((events, None));
        }
        let beginning = |subject: &Uuid| {
            events
                .iter()
                .any(|e| e.sequence == 1 && subject_of(e) == Some(*subject))
        };
        if !subjects.iter().all(beginning) {
            return Ok((self.seal_all(events).await?, None));
        }
        let offer = self.keys.offer(&subjects);
        let sealed = Self::seal_with(events, &offer.keys)?;
        Ok((sealed, Some(offer).filter(|o| !o.offered.is_empty())))
    }

    /// The keys of an offer were stored with the events sealed with them: they are cached.
    pub(crate) fn kept(&self, offer: Offer) {
        self.keys.kept(offer);
    }

    /// Events sealed with the keys of an offer that was not taken (a subject had a key
    /// already), sealed again with the keys stored.
    pub(crate) async fn reseal(
        &self,
        events: Vec<SerializedEvent>,
        offer: &Offer,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.seal_all(Self::open_with(events, &offer.keys)?).await
    }

    fn seal_with(
        events: Vec<SerializedEvent>,
        keys: &HashMap<Uuid, subject_keys::DataKey>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        events
            .into_iter()
            .map(|mut event| {
                let Some(subject) = subject_of(&event) else {
                    return Ok(event);
                };
                let key = keys
                    .get(&subject)
                    .ok_or_else(|| unknown(KeyError::Erased))?;
                let plain = serde_json::to_vec(&event.payload).map_err(unknown)?;
                let sealed = subject_keys::seal(key.expose_secret(), &plain, &binding(&event));
                event.payload = serde_json::json!({
                    "sealed": STANDARD.encode(sealed),
                    "clear": clear_summary(&event.payload),
                });
                Ok(event)
            })
            .collect()
    }

    /// Stored payloads → domain payloads. Events written before sealing existed pass through.
    pub async fn open_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let subjects = sealed_subjects(&events);
        if subjects.is_empty() {
            return Ok(events);
        }
        let keys = self.keys.for_reading(&subjects).await.map_err(key_error)?;
        Self::open_with(events, &keys)
    }

    /// [`Self::open_all`], reading the keys on a connection the caller holds.
    pub async fn open_all_on(
        &self,
        conn: &mut PgConnection,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let subjects = sealed_subjects(&events);
        if subjects.is_empty() {
            return Ok(events);
        }
        let keys = self
            .keys
            .for_reading_on(conn, &subjects)
            .await
            .map_err(key_error)?;
        Self::open_with(events, &keys)
    }

    fn open_with(
        events: Vec<SerializedEvent>,
        keys: &HashMap<Uuid, subject_keys::DataKey>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        events
            .into_iter()
            .map(|mut event| {
                let Some(sealed) = sealed_part(&event) else {
                    return Ok(event);
                };
                let subject = Uuid::try_parse(&event.aggregate_id).map_err(unknown)?;
                let Some(key) = keys.get(&subject) else {
                    event.payload =
                        erased_payload(&event).ok_or_else(|| unknown(KeyError::Erased))?;
                    return Ok(event);
                };
                let bytes = STANDARD.decode(sealed).map_err(unknown)?;
                let plain = subject_keys::open(key.expose_secret(), &bytes, &binding(&event))
                    .ok_or_else(|| unknown(KeyError::Unwrap))?;
                event.payload = serde_json::from_slice(&plain)
                    .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?;
                Ok(event)
            })
            .collect()
    }
}
