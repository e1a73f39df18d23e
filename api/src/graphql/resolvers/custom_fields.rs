//! Custom fields: their definitions per datasheet (administrators change them) and their
//! values on records.

use async_graphql::{Context, InputObject, Object, SimpleObject};
use custos_domain::{CustomField, CustomSchema, Datasheet, FieldSchemaCommand, Permission};

use crate::auth::policy::check_datasheet;
use crate::error::ApiError;
use crate::graphql::context::Cx;
use crate::graphql::types::enums::{CustomFieldType, DatasheetKind};

/// A custom field of a datasheet.
#[derive(SimpleObject)]
pub(crate) struct CustomFieldDefinition {
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

#[derive(InputObject)]
pub(crate) struct AddCustomFieldInput {
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
pub(crate) struct UpdateCustomFieldInput {
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
pub(crate) struct CustomFieldsQuery;

#[Object]
impl CustomFieldsQuery {
    /// A datasheet's custom fields, in the order they were added (retired ones only when
    /// asked). Needs `read` on the datasheet.
    async fn custom_field_definitions(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        #[graphql(default)] include_retired: bool,
    ) -> Result<Vec<CustomFieldDefinition>, ApiError> {
        let cx = Cx::new(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        check_datasheet(cx.caller, datasheet, Permission::Read)?;
        let schema = cx.services.custom_schema(cx.tenant(), datasheet).await?;
        Ok(schema
            .all()
            .filter(|field| include_retired || !field.retired)
            .map(|field| CustomFieldDefinition::new(datasheet, field))
            .collect())
    }
}

#[derive(Default)]
pub(crate) struct CustomFieldsMutation;

#[Object]
impl CustomFieldsMutation {
    /// Adds a custom field to a datasheet.
    async fn add_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        input: AddCustomFieldInput,
    ) -> Result<CustomFieldDefinition, ApiError> {
        let cx = Cx::new(ctx)?;
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
        let schema = cx
            .services
            .change_custom_fields(cx.caller, datasheet, command, cx.request_id)
            .await?;
        definition(datasheet, &schema, &key)
    }

    /// Changes a custom field's label, required flag or choices.
    async fn update_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        key: String,
        input: UpdateCustomFieldInput,
    ) -> Result<CustomFieldDefinition, ApiError> {
        let cx = Cx::new(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        let command = FieldSchemaCommand::Change {
            datasheet,
            key: key.clone(),
            label: input.label,
            required: input.required,
            options: input.options,
        };
        let schema = cx
            .services
            .change_custom_fields(cx.caller, datasheet, command, cx.request_id)
            .await?;
        definition(datasheet, &schema, &key)
    }

    /// Retires a custom field: it takes no new values and leaves records' lists of custom
    /// fields; its values stay in the history.
    async fn retire_custom_field(
        &self,
        ctx: &Context<'_>,
        datasheet: DatasheetKind,
        key: String,
    ) -> Result<CustomFieldDefinition, ApiError> {
        let cx = Cx::new(ctx)?;
        let datasheet = Datasheet::from(datasheet);
        let command = FieldSchemaCommand::Retire {
            datasheet,
            key: key.clone(),
        };
        let schema = cx
            .services
            .change_custom_fields(cx.caller, datasheet, command, cx.request_id)
            .await?;
        definition(datasheet, &schema, &key)
    }
}
