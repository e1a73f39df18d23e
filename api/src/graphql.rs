//! The GraphQL API: the schema, merged from one query and one mutation object per area of
//! `resolvers`, with the one extension every request passes through (`hooks`: the limits, the
//! field errors, authorization, read-your-writes and the measurements).
//!
//! Floors inside this room, from the bottom: `error`, `context`, `arguments`, `pagination`,
//! `loaders`, `limits` and `observe`; `types` (what resolvers share); `authorization` and
//! `consistency`; `hooks`; `resolvers`.

use std::sync::Arc;

use async_graphql::{MergedObject, Schema, SchemaBuilder};

use crate::service::Services;

pub(crate) mod arguments;
pub(crate) mod authorization;
pub(crate) mod consistency;
pub(crate) mod context;
pub(crate) mod error;
pub(crate) mod hooks;
pub(crate) mod input_errors;
pub(crate) mod limits;
pub(crate) mod loaders;
pub(crate) mod observe;
pub(crate) mod pagination;
pub(crate) mod resolvers;
pub(crate) mod types;

use resolvers::{
    admin, audit, breaches, custom_fields, datasheets, exports, history, identity, imports,
    lifecycle, live_records, notifications, privacy, reports, retention, security, webhooks,
};

/// The root query type.
#[derive(MergedObject, Default)]
pub(crate) struct Query(
    identity::IdentityQuery,
    admin::AdminQuery,
    datasheets::RecordsQuery,
    history::HistoryQuery,
    security::SecurityQuery,
    custom_fields::CustomFieldsQuery,
    reports::ReportsQuery,
    privacy::PrivacyQuery,
    retention::RetentionQuery,
    breaches::BreachesQuery,
    notifications::NotificationsQuery,
    webhooks::WebhooksQuery,
    audit::AuditQuery,
);

/// The root mutation type.
#[derive(MergedObject, Default)]
pub(crate) struct Mutation(
    identity::IdentityMutation,
    admin::AdminMutation,
    datasheets::RecordsMutation,
    security::SecurityMutation,
    custom_fields::CustomFieldsMutation,
    exports::ExportsMutation,
    lifecycle::SubscriptionMutation,
    imports::ImportsMutation,
    privacy::PrivacyMutation,
    retention::RetentionMutation,
    breaches::BreachesMutation,
    webhooks::WebhooksMutation,
    audit::AuditMutation,
);

/// The root subscription type (served over WebSocket only); each field's stream is made in
/// its area's resolvers.
#[derive(Default)]
pub(crate) struct Subscription;

#[async_graphql::Subscription]
impl Subscription {
    /// New audit entries of your organisation, as they are recorded (over
    /// `graphql-transport-ws` at `/graphql/ws`, with `{"authorization": "Bearer ..."}` as the
    /// connection payload). `history` on every datasheet. Ends when the session does, or
    /// when the entry it last sent has been gone from the audit log for a minute (subscribe again).
    async fn audit_feed(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<impl futures::Stream<Item = audit::AuditEntry>> {
        audit::audit_feed(ctx).await
    }

    /// Every change of the records you may read — created, updated, archived, restored,
    /// hired, restricted, restriction lifted, erased — once the lists show it (over
    /// `graphql-transport-ws` at `/graphql/ws`). `datasheet` and `ids` (at most 100) narrow
    /// it. A subscriber too slow to take what it is sent is ended with a `CONFLICT` error
    /// saying so; it ends when the session does.
    async fn record_changed(
        &self,
        ctx: &async_graphql::Context<'_>,
        datasheet: Option<types::enums::DatasheetKind>,
        ids: Option<Vec<async_graphql::ID>>,
    ) -> Result<
        impl futures::Stream<Item = async_graphql::Result<live_records::RecordChangeNode>>,
        crate::error::ApiError,
    > {
        live_records::record_changed(ctx, datasheet, ids).await
    }
}

/// The schema every request runs against.
pub(crate) type CustosSchema = Schema<Query, Mutation, Subscription>;

/// Query limits: expensive documents are refused before they run (how deep they nest, and
/// how many aliases they have, is measured by `limits`).
pub(crate) const MAX_COMPLEXITY: usize = 2_000;

fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(Query::default(), Mutation::default(), Subscription)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32)
}

/// Builds the schema; `services` is shared by every request. Introspection can be switched
/// off for production, and field suggestions go with it.
pub(crate) fn build_schema(services: Arc<Services>, introspection: bool) -> CustosSchema {
    let builder = builder()
        .extension(hooks::Hooks::new(services.metrics.clone()))
        .data(services);
    if introspection {
        builder.finish()
    } else {
        // Without introspection, "did you mean …" would still tell field names to anyone who
        // guesses near them.
        builder
            .disable_introspection()
            .disable_suggestions()
            .finish()
    }
}

/// The schema in SDL, as committed in `docs/schema.graphql`.
#[cfg(test)]
fn sdl() -> String {
    builder().finish().sdl()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use custos_domain::Datasheet;

    use crate::error::snake_to_camel;

    /// The fields (or input fields) of a type, with whether each is non-null.
    async fn fields_of(type_name: &str) -> Vec<(String, bool)> {
        let list = if type_name.ends_with("Input") {
            "inputFields"
        } else {
            "fields"
        };
        let query =
            format!("{{ __type(name: \"{type_name}\") {{ {list} {{ name type {{ kind }} }} }} }}");
        let response = super::builder().finish().execute(query).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let data = response
            .data
            .into_json()
            .expect("introspection answers JSON");
        data["__type"][list]
            .as_array()
            .expect("the type exists")
            .iter()
            .map(|field| {
                let name = field["name"].as_str().unwrap_or_default().to_owned();
                (name, field["type"]["kind"] == "NON_NULL")
            })
            .collect()
    }

    /// Each datasheet's GraphQL type and inputs carry exactly the domain's built-in fields, in
    /// its order (required ones non-null on creation), besides what every record has and the
    /// references the API adds.
    #[tokio::test]
    async fn the_datasheet_types_carry_the_domain_fields() {
        // What every record has: the interface's fields, and why processing is restricted.
        let mut common: Vec<String> = fields_of("Record").await.into_iter().map(|f| f.0).collect();
        common.push("restrictionReason".to_owned());
        let references = ["manager", "hiredFromId", "hiredAsId", "hiredAs"];
        for (datasheet, object) in [
            (Datasheet::Employees, "Employee"),
            (Datasheet::Contacts, "Contact"),
            (Datasheet::Applicants, "Applicant"),
        ] {
            let domain: Vec<(String, bool)> = datasheet
                .fields()
                .iter()
                .map(|spec| (snake_to_camel(spec.name), spec.required))
                .collect();
            let own: Vec<String> = fields_of(object)
                .await
                .into_iter()
                .map(|f| f.0)
                .filter(|name| !common.contains(name) && !references.contains(&name.as_str()))
                .collect();
            let names: Vec<String> = domain.iter().map(|f| f.0.clone()).collect();
            assert_eq!(own, names, "{object}");
            let mut create = fields_of(&format!("Create{object}Input")).await;
            assert_eq!(create.pop(), Some(("customFields".to_owned(), false)));
            assert_eq!(create, domain, "Create{object}Input");
            let update = fields_of(&format!("Update{object}Input")).await;
            let patch: Vec<(String, bool)> = names
                .into_iter()
                .map(|name| (name, false))
                .chain([("customFields".to_owned(), false)])
                .collect();
            assert_eq!(update, patch, "Update{object}Input");
        }
    }

    /// The committed SDL is the API contract: changing the schema without updating it fails
    /// here. `CUSTOS_UPDATE_SCHEMA=1 cargo test -p custos-api` rewrites it.
    #[test]
    fn the_committed_schema_matches_the_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schema.graphql");
        let current = super::sdl();
        if std::env::var_os("CUSTOS_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &current).expect("docs/schema.graphql is writable");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/schema.graphql is out of date: run `CUSTOS_UPDATE_SCHEMA=1 cargo test -p custos-api` and commit it"
        );
    }
}
