//! The API's enums. Those that mirror a domain enum say so with `remote`, which also
//! generates the conversions both ways.

use async_graphql::Enum;
use serde::Serialize;
use serde_json::Value;

/// The datasheets a tenant keeps.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Datasheet", remote = "custos_domain::Datasheet")]
pub(crate) enum DatasheetKind {
    Employees,
    Contacts,
    Applicants,
}

/// The plans of the terms; storage limits and prices are the provider's configuration.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Plan", remote = "custos_domain::Plan")]
pub(crate) enum PlanKind {
    Basic,
    Standard,
    Maxi,
    Premium,
}

/// Where an organisation is in its life with the provider.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "custos_domain::SubscriptionStatus")]
pub(crate) enum OrganizationStatus {
    /// Trying it out until `trialEndsAt`.
    Trial,
    /// On a plan.
    Active,
    /// The trial ended without a plan: administrators may choose one or export until
    /// `deletionScheduledAt`.
    Expired,
    /// Suspended by the provider: administrators may read the status and export.
    Suspended,
    /// Cancelled: served in full until `cancellationEffectiveAt`.
    Cancelling,
    /// The subscription ended: administrators may read and export until
    /// `migrationAccessUntil`.
    Migration,
    /// Deleted.
    Purged,
}

/// Why a subject is erased: the grounds of GDPR Art. 17(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "custos_domain::ErasureGround")]
pub(crate) enum ErasureGroundKind {
    /// (a) no longer necessary for the purposes it was collected for.
    NoLongerNecessary,
    /// (b) consent withdrawn, and no other legal basis.
    ConsentWithdrawn,
    /// (c) the subject objected.
    Objection,
    /// (d) processed unlawfully.
    UnlawfulProcessing,
    /// (e) erasure required by a legal obligation.
    LegalObligation,
    /// (f) collected from a child for information society services.
    ChildData,
}

/// Why processing is restricted: the cases of GDPR Art. 18(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[graphql(remote = "custos_domain::RestrictionReason")]
#[serde(rename_all = "snake_case")]
pub(crate) enum RestrictionReasonKind {
    /// (a) the subject contests the data's accuracy, while it is verified.
    AccuracyContested,
    /// (b) unlawful processing; the subject asks for restriction instead of erasure.
    UnlawfulProcessing,
    /// (c) no longer needed, but the subject needs it for legal claims.
    LegalClaims,
    /// (d) the subject objected, while legitimate grounds are weighed.
    ObjectionPending,
}

/// How an employee is employed.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EmploymentType {
    FullTime,
    PartTime,
    Contractor,
    Intern,
    Temporary,
}

/// Where a job applicant is in the recruiting pipeline.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Serialize)]
#[graphql(remote = "custos_domain::Stage")]
#[serde(rename_all = "snake_case")]
pub(crate) enum PipelineStage {
    Applied,
    Screening,
    Interview,
    Offer,
    Hired,
    Rejected,
    Withdrawn,
}

/// A GraphQL enum value from its stored (`snake_case`) name.
pub(crate) fn stored_enum<T: async_graphql::resolver_utils::EnumType + Serialize>(
    raw: Option<&str>,
) -> Option<T> {
    let raw = raw?;
    T::items().iter().map(|item| item.value).find(|value| {
        serde_json::to_value(value)
            .ok()
            .as_ref()
            .and_then(Value::as_str)
            == Some(raw)
    })
}

/// What a role lets its users do with a datasheet.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "Permission", remote = "custos_domain::Permission")]
pub(crate) enum PermissionKind {
    Read,
    Create,
    Update,
    Archive,
    Erase,
    Export,
    History,
    Report,
}

/// The type of a custom field's values.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "custos_domain::CustomKind")]
pub(crate) enum CustomFieldType {
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

/// The lawful bases of GDPR Art. 6(1).
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(name = "LegalBasis", remote = "custos_domain::LegalBasis")]
pub(crate) enum LegalBasisKind {
    /// (a) the person consented to the purpose.
    Consent,
    /// (b) needed for a contract with the person, or steps before one.
    Contract,
    /// (c) needed to comply with a legal obligation.
    LegalObligation,
    /// (d) needed to protect someone's vital interests.
    VitalInterests,
    /// (e) a task in the public interest or official authority.
    PublicTask,
    /// (f) the organisation's or a third party's legitimate interests.
    LegitimateInterests,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "custos_domain::ExportFormat")]
pub(crate) enum ExportFormatKind {
    /// RFC 4180 CSV, UTF-8, one row per record; cells a spreadsheet would run as formulas
    /// (`=`, `+`, `-`, `@`) start with `'`; lists are joined with `; `.
    Csv,
    /// A JSON array of records.
    Json,
}

/// How a stream's chain is broken.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::infra::integrity::chain::Breach")]
pub(crate) enum BreachKind {
    /// The event's bytes no longer match its hash.
    Edited,
    /// An event is missing here.
    Deleted,
    /// An event that was not part of the chain was put here.
    Inserted,
    /// The event was written at another place in its stream.
    Reordered,
}
