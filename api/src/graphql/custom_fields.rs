//! Custom fields: their definitions per datasheet (administrators change them) and their
//! values on records.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, Enum, InputObject, Json, Object, SimpleObject};
use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::{
    CustomField, CustomKind, CustomSchema, Datasheet, FieldSchemaCommand, Permission,
};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use super::records::DatasheetKind;
use super::{principal, request, services};
use crate::error::ApiError;

/// The type of a custom field's values.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum CustomFieldType {
    /// One line, up to 200 characters.
    Text,
    /// Up to 10,000 characters, line breaks kept.
    LongText,
    Number,
    /// `YYYY-MM-DD`.
    Date,
    Boolean,
    /// One of the field's options.
    SingleChoice,
    /// Some of the field's options, as a list.
    MultipleChoice,
}

impl From<CustomKind> for CustomFieldType {
    fn from(kind: CustomKind) -> Self {
        match kind {
            CustomKind::Text => Self::Text,
            CustomKind::LongText => Self::LongText,
            CustomKind::Number => Self::Number,
            CustomKind::Date => Self::Date,
            CustomKind::Boolean => Self::Boolean,
            CustomKind::SingleChoice => Self::SingleChoice,
            CustomKind::MultipleChoice => Self::MultipleChoice,
        }
    }
}

impl From<CustomFieldType> for CustomKind {
    fn from(kind: CustomFieldType) -> Self {
        match kind {
            CustomFieldType::Text => Self::Text,
            CustomFieldType::LongText => Self::LongText,
            CustomFieldType::Number => Self::Number,
            CustomFieldType::Date => Self::Date,
            CustomFieldType::Boolean => Self::Boolean,
            CustomFieldType::SingleChoice => Self::SingleChoice,
            CustomFieldType::MultipleChoice => Self::MultipleChoice,
        }
    }
}

/// A custom field of a datasheet.
#[derive(SimpleObject)]
pub struct CustomFieldDefinition {
    datasheet: DatasheetKind,
    /// Stable; records, filters and orders name the field `custom.<key>`.
    key: String,
    label: String,
    #[graphql(name = "type")]
    kind: CustomFieldType,
    /// New records must have a value, and no record can clear it.
    required: bool,
    /// The choices of a choice field, in display order.
    options: Vec<String>,
    /// Retired fields take no new values; their values stay in the history.
    retired: bool,
}

impl CustomFieldDefinition {
    fn new(datasheet: Datasheet, field: &CustomField) -> Self {
        Self {
            datasheet: datasheet.into(),
            key: field.key.clone(),
            label: field.label.clone(),
            kind: field.kind.into(),
            required: field.required,
            options: field.options.clone(),
            retired: field.retired,
        }
    }
}

/// A custom field's value on a record: `value` is text, a number, a boolean, a
/// `YYYY-MM-DD` date or a list of choices, as `type` says, or `null`.
#[derive(SimpleObject)]
pub struct CustomFieldValue {
    key: String,
    label: String,
    #[graphql(name = "type")]
    kind: CustomFieldType,
    value: Json<Value>,
}

/// A custom field's value to set; `null` (or an empty list) clears it.
#[derive(InputObject, Serialize)]
pub struct CustomFieldInput {
    /// The field's key (without `custom.`).
    key: String,
    value: Option<Json<Value>>,
}

/// Moves `custom_fields` entries of a serialised input to `custom.<key>` fields.
pub(crate) fn spread_custom_fields(
    fields: &mut custos_domain::record::Fields,
) -> Result<(), ApiError> {
    let Some(entries) = fields.remove("custom_fields") else {
        return Ok(());
    };
    let entries: Vec<CustomFieldEntry> = match entries {
        Value::Null => Vec::new(),
        other => serde_json::from_value(other).map_err(ApiError::internal)?,
    };
    for entry in entries {
        let name = format!("{CUSTOM_PREFIX}{}", entry.key);
        if fields.insert(name, entry.value).is_some() {
            return Err(ApiError::validation(
                "customFields",
                format!("the custom field `{}` is given twice", entry.key),
            ));
        }
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct CustomFieldEntry {
    key: String,
    value: Value,
}

/// Batches schema lookups within one request (every record of a page needs its datasheet's).
pub struct SchemaLoader(pub PgPool);

impl Loader<Datasheet> for SchemaLoader {
    type Value = CustomSchema;
    type Error = Arc<sqlx::Error>;

    async fn load(
        &self,
        keys: &[Datasheet],
    ) -> Result<HashMap<Datasheet, CustomSchema>, Self::Error> {
        let mut schemas = HashMap::new();
        for datasheet in keys {
            let schema = custos_projections::custom_fields::schema(&self.0, *datasheet)
                .await
                .map_err(Arc::new)?;
            schemas.insert(*datasheet, schema);
        }
        Ok(schemas)
    }
}

/// The values of a record's live custom fields, every field listed (`null` without a value).
pub(crate) async fn values(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    fields: &serde_json::Map<String, Value>,
) -> Result<Vec<CustomFieldValue>, ApiError> {
    let loader = ctx
        .data::<async_graphql::dataloader::DataLoader<SchemaLoader>>()
        .map_err(|_| ApiError::Unauthenticated)?;
    let schema = loader
        .load_one(datasheet)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("loading custom fields failed: {err}")))?
        .unwrap_or_default();
    Ok(schema
        .active()
        .map(|field| CustomFieldValue {
            key: field.key.clone(),
            label: field.label.clone(),
            kind: field.kind.into(),
            value: Json(fields.get(&field.name()).cloned().unwrap_or(Value::Null)),
        })
        .collect())
}

#[derive(InputObject)]
pub struct AddCustomFieldInput {
    /// 1 to 40 lower-case letters, digits and underscores, starting with a letter; never
    /// reused, even after the field is retired.
    key: String,
    label: String,
    #[graphql(name = "type")]
    kind: CustomFieldType,
    #[graphql(default)]
    required: bool,
    /// For choice fields: 1 to 100 distinct choices.
    #[graphql(default)]
    options: Vec<String>,
}

/// Changes what is given; `options` replaces the choice list (stored values keep their
/// history; new values must be among the new choices).
#[derive(InputObject)]
pub struct UpdateCustomFieldInput {
    label: Option<String>,
    required: Option<bool>,
    options: Option<Vec<String>>,
}

fn definition(
    datasheet: Datasheet,
    schema: &CustomSchema,
    key: &str,
) -> Result<CustomFieldDefinition, ApiError> {
    schema
        .fields
        .get(key)
        .map(|field| CustomFieldDefinition::new(datasheet, field))
        .ok_or(ApiError::NotFound)
}

#[derive(Default)]
pub struct CustomFieldsQuery;

#[Object]
impl CustomFieldsQuery {
    /// A datasheet's custom fields, in the order they were added (retired ones only when
    /// asked). Needs `read` on the datasheet.
    async fn custom_field_definitions(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        #[graphql(default)] include_retired: bool,
    ) -> async_graphql::Result<Vec<CustomFieldDefinition>> {
        let principal = principal(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        crate::authz::check_record(principal, datasheet, Permission::Read)?;
        let schema = services(ctx)?
            .custom_schema(&principal.tenant, datasheet)
            .await?;
        Ok(schema
            .all()
            .filter(|field| include_retired || !field.retired)
            .map(|field| CustomFieldDefinition::new(datasheet, field))
            .collect())
    }
}

#[derive(Default)]
pub struct CustomFieldsMutation;

#[Object]
impl CustomFieldsMutation {
    /// Adds a custom field to a datasheet.
    async fn add_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        input: AddCustomFieldInput,
    ) -> async_graphql::Result<CustomFieldDefinition> {
        let datasheet = Datasheet::from(datasheet);
        let key = input.key.clone();
        let command = FieldSchemaCommand::Add {
            datasheet,
            key: input.key,
            label: input.label,
            kind: input.kind.into(),
            required: input.required,
            options: input.options,
        };
        let schema = services(ctx)?
            .change_custom_fields(
                principal(ctx)?,
                datasheet,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(definition(datasheet, &schema, &key)?)
    }

    /// Changes a custom field's label, required flag or choices.
    async fn update_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        key: String,
        input: UpdateCustomFieldInput,
    ) -> async_graphql::Result<CustomFieldDefinition> {
        let datasheet = Datasheet::from(datasheet);
        let command = FieldSchemaCommand::Change {
            datasheet,
            key: key.clone(),
            label: input.label,
            required: input.required,
            options: input.options,
        };
        let schema = services(ctx)?
            .change_custom_fields(
                principal(ctx)?,
                datasheet,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(definition(datasheet, &schema, &key)?)
    }

    /// Retires a custom field: it takes no new values and leaves records' lists of custom
    /// fields; its values stay in the history.
    async fn retire_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        key: String,
    ) -> async_graphql::Result<CustomFieldDefinition> {
        let datasheet = Datasheet::from(datasheet);
        let command = FieldSchemaCommand::Retire {
            datasheet,
            key: key.clone(),
        };
        let schema = services(ctx)?
            .change_custom_fields(
                principal(ctx)?,
                datasheet,
                command,
                request(ctx)?.origin.request_id,
            )
            .await?;
        Ok(definition(datasheet, &schema, &key)?)
    }
}
