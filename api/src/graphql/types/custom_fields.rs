//! Custom field values on records: as records show them, and as inputs set them.

use async_graphql::{Context, InputObject, Json, SimpleObject};
use custos_domain::custom_field::CUSTOM_PREFIX;
use custos_domain::Datasheet;
use serde::Serialize;
use serde_json::Value;

use super::enums::CustomFieldType;
use crate::error::ApiError;
use crate::graphql::loaders::load_schema;

/// A custom field's value on a record: `value` is text, a number, a boolean, a
/// `YYYY-MM-DD` date or a list of choices, as `type` says, or `null`.
#[derive(SimpleObject)]
pub(crate) struct CustomFieldValue {
    key: String,
    label: String,
    #[graphql(name = "type")]
    kind: CustomFieldType,
    value: Json<Value>,
}

/// A custom field's value to set; `null` (or an empty list) clears it.
#[derive(InputObject, Serialize)]
pub(crate) struct CustomFieldInput {
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

/// The values of a record's live custom fields, every field listed (`null` without a value).
pub(crate) async fn values(
    ctx: &Context<'_>,
    datasheet: Datasheet,
    fields: &serde_json::Map<String, Value>,
) -> Result<Vec<CustomFieldValue>, ApiError> {
    let schema = load_schema(ctx, datasheet).await?;
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
