//! The write model of Custos: aggregates, commands, events, value objects. Pure: no I/O.

pub mod api_token;
pub mod consent;
pub mod custom_field;
pub mod datasheet;
pub mod export;
pub mod incident;
pub mod metadata;
pub mod organization;
pub mod permission;
pub mod personal;
pub mod pipeline;
pub mod record;
pub mod retention;
pub mod role;
pub mod subscription;
pub mod user;
pub mod values;
pub mod webhook;

pub use api_token::{ApiToken, ApiTokenCommand, ApiTokenError, ApiTokenEvent, TokenRefusal};
pub use consent::{ConsentCommand, ConsentError, ConsentEvent, Consents, LegalBasis};
pub use custom_field::{
    CustomField, CustomKind, CustomSchema, FieldSchema, FieldSchemaCommand, FieldSchemaError,
    FieldSchemaEvent,
};
pub use datasheet::{Datasheet, FieldKind, FieldSpec};
pub use export::{DataExport, DataExportCommand, DataExportError, DataExportEvent, ExportFormat};
pub use incident::{Incident, IncidentCommand, IncidentError, IncidentEvent, IncidentScope};
pub use metadata::{Actor, EventMetadata};
pub use organization::{Organization, OrganizationCommand, OrganizationEvent};
pub use permission::{Grant, Grants, Permission};
pub use pipeline::Stage;
pub use record::{
    ErasureGround, Record, RecordCommand, RecordError, RecordEvent, RestrictionReason,
};
pub use retention::{
    RetentionCommand, RetentionError, RetentionEvent, RetentionPolicy, RetentionTrigger,
};
pub use role::{Role, RoleCommand, RoleError, RoleEvent, RoleName};
pub use subscription::{
    FinalTreeHead, Plan, Status as SubscriptionStatus, StorageLimits, Subscription,
    SubscriptionCommand, SubscriptionError, SubscriptionEvent,
};
pub use user::{LoginFailure, LoginOrigin, SecondFactor, User, UserCommand, UserError, UserEvent};
pub use values::{parse_date, Email, PersonName, Phone, ValueError};
pub use webhook::{Webhook, WebhookCommand, WebhookError, WebhookEvent, WebhookTopic, WebhookUrl};
