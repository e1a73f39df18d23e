//! Custom fields: each datasheet's own extra fields, as its `FieldSchema` aggregate records
//! them; administrators add, change and retire them.

use custos_domain::custom_field::schema_id;
use custos_domain::{CustomSchema, Datasheet, FieldSchemaCommand};
use custos_projections::custom_fields;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::tenancy::tenant::Tenant;
use crate::infra::tenancy::tenant_caches::SCHEMA_FRESH_FOR;
use crate::service::Services;

impl Services {
    /// A datasheet's custom fields as they stand.
    pub(crate) async fn custom_schema(
        &self,
        tenant: &Tenant,
        datasheet: Datasheet,
    ) -> Result<CustomSchema, ApiError> {
        let cache = &tenant.caches.schemas;
        if let Some(schema) = cache.get(&datasheet) {
            return Ok(schema);
        }
        let ticket = cache.ticket();
        let schema = custom_fields::schema(&tenant.pool, datasheet).await?;
        cache.put(ticket, datasheet, schema.clone(), SCHEMA_FRESH_FOR);
        Ok(schema)
    }

    /// Adds, changes or retires a custom field of `datasheet` (administrators), and answers the
    /// datasheet's schema afterwards.
    pub(crate) async fn change_custom_fields(
        &self,
        principal: &Principal,
        datasheet: Datasheet,
        command: FieldSchemaCommand,
        request_id: Uuid,
    ) -> Result<CustomSchema, ApiError> {
        let tenant = &principal.tenant;
        self.command(
            tenant,
            &tenant.field_schemas,
            schema_id(datasheet),
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.custom_schema(tenant, datasheet).await
    }
}
