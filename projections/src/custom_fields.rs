//! The `custom_fields` read model: each datasheet's custom fields as they stand, for writes
//! (which check values against them), lists (which filter and order by them) and clients.

use async_trait::async_trait;
use custos_domain::{
    CustomField, CustomKind, CustomSchema, Datasheet, FieldSchema, FieldSchemaEvent,
};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};

use crate::{AnyEvent, ProjectedEvent, Projection};

/// Projects FieldSchema events into `custom_fields`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CustomFieldsProjection;

#[async_trait]
impl Projection for CustomFieldsProjection {
    fn name(&self) -> &'static str {
        "custom_fields"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<FieldSchema as cqrs_es::Aggregate>::TYPE]
    }
    fn tables(&self) -> &'static [crate::Table] {
        const { &[crate::Table::new("custom_fields")] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::FieldSchema(schema_event) = &event.event else {
            return Ok(());
        };
        match schema_event {
            FieldSchemaEvent::CustomFieldAdded {
                datasheet,
                key,
                label,
                kind,
                required,
                options,
            } => {
                sqlx::query(
                    "INSERT INTO custom_fields (datasheet, key, label, kind, required, options, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT DO NOTHING",
                )
                .bind(datasheet.as_str())
                .bind(key)
                .bind(label)
                .bind(kind_name(*kind))
                .bind(required)
                .bind(Json(options))
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            FieldSchemaEvent::CustomFieldChanged {
                datasheet,
                key,
                label,
                required,
                options,
            } => {
                sqlx::query(
                    "UPDATE custom_fields SET label = coalesce($3, label), required = coalesce($4, required),
                            options = coalesce($5, options), version = $6, updated_at = $7
                     WHERE datasheet = $1 AND key = $2 AND version < $6",
                )
                .bind(datasheet.as_str())
                .bind(key)
                .bind(label)
                .bind(required)
                .bind(options.as_ref().map(Json))
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
            FieldSchemaEvent::CustomFieldRetired { datasheet, key } => {
                sqlx::query(
                    "UPDATE custom_fields SET retired = true, version = $3, updated_at = $4
                     WHERE datasheet = $1 AND key = $2 AND version < $3",
                )
                .bind(datasheet.as_str())
                .bind(key)
                .bind(event.sequence)
                .bind(event.recorded_at)
                .execute(conn)
                .await?;
            }
        }
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM custom_fields")
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The stored name of a kind.
pub fn kind_name(kind: CustomKind) -> &'static str {
    match kind {
        CustomKind::Text => "text",
        CustomKind::LongText => "long_text",
        CustomKind::Number => "number",
        CustomKind::Date => "date",
        CustomKind::Boolean => "boolean",
        CustomKind::SingleChoice => "single_choice",
        CustomKind::MultipleChoice => "multiple_choice",
    }
}

fn kind_from(name: &str) -> Option<CustomKind> {
    [
        CustomKind::Text,
        CustomKind::LongText,
        CustomKind::Number,
        CustomKind::Date,
        CustomKind::Boolean,
        CustomKind::SingleChoice,
        CustomKind::MultipleChoice,
    ]
    .into_iter()
    .find(|k| kind_name(*k) == name)
}

#[derive(sqlx::FromRow)]
struct Row {
    key: String,
    label: String,
    kind: String,
    required: bool,
    options: Json<Vec<String>>,
    retired: bool,
}

/// A datasheet's custom fields, retired ones included.
pub async fn schema<'e>(
    db: impl PgExecutor<'e>,
    datasheet: Datasheet,
) -> sqlx::Result<CustomSchema> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT key, label, kind, required, options, retired FROM custom_fields
         WHERE datasheet = $1 ORDER BY created_at, key",
    )
    .bind(datasheet.as_str())
    .fetch_all(db)
    .await?;
    let mut schema = CustomSchema::default();
    for row in rows {
        if let Some(kind) = kind_from(&row.kind) {
            schema.insert(CustomField {
                key: row.key,
                label: row.label,
                kind,
                required: row.required,
                options: row.options.0,
                retired: row.retired,
            });
        }
    }
    Ok(schema)
}
