//! The one API error type, and the one place domain and infrastructure errors map to the codes
//! clients see (`extensions.code`; `graphql::error` carries them into GraphQL). Internal causes
//! are logged once, where an error becomes a response, and never returned.

use cqrs_es::AggregateError;
use custos_domain::{
    ApiTokenError, ConsentError, DataExportError, FieldSchemaError, IncidentError, RecordError,
    RetentionError, RoleError, SubscriptionError, UserError,
};

/// What a client sees as `extensions.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthenticated,
    Forbidden,
    NotFound,
    Validation,
    Conflict,
    Unavailable,
    /// The organisation's trial ended without a plan.
    TrialEnded,
    /// The provider suspended the organisation.
    Suspended,
    /// The organisation's subscription ended: its migration window is open.
    SubscriptionEnded,
    /// A trial reached its storage limit.
    QuotaExceeded,
    Internal,
}

impl Code {
    /// Every code.
    pub const ALL: [Code; 11] = [
        Code::Unauthenticated,
        Code::Forbidden,
        Code::NotFound,
        Code::Validation,
        Code::Conflict,
        Code::Unavailable,
        Code::TrialEnded,
        Code::Suspended,
        Code::SubscriptionEnded,
        Code::QuotaExceeded,
        Code::Internal,
    ];

    /// The code spelled `text`, if there is one.
    pub fn parse(text: &str) -> Option<Code> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::Forbidden => "FORBIDDEN",
            Code::NotFound => "NOT_FOUND",
            Code::Validation => "VALIDATION",
            Code::Conflict => "CONFLICT",
            Code::Unavailable => "UNAVAILABLE",
            Code::TrialEnded => "TRIAL_ENDED",
            Code::Suspended => "SUSPENDED",
            Code::SubscriptionEnded => "SUBSCRIPTION_ENDED",
            Code::QuotaExceeded => "QUOTA_EXCEEDED",
            Code::Internal => "INTERNAL",
        }
    }
}

/// Every error a resolver can return. It deliberately does not implement `Display`:
/// async-graphql converts any `Display` type with a blanket `From`, which would drop the code;
/// without it, `?` goes through the `From` below, which sets `extensions.code`.
#[derive(Debug)]
pub enum ApiError {
    /// The token is missing, malformed, unknown, revoked or expired.
    Unauthenticated,
    /// Login failures: one message whatever failed (tenant, email or password).
    InvalidCredentials,
    Forbidden,
    /// The user signed in with a temporary password and must replace it first.
    PasswordChangeRequired,
    /// The organisation requires a second factor and the user has not enrolled one yet.
    TwoFactorEnrolmentRequired,
    /// A wrong, used or expired second-factor code, or an unknown login challenge.
    InvalidSecondFactor,
    /// Not allowed without a permission the caller lacks, named in `extensions.permission`:
    /// `<datasheet>/<permission>` (`employees/export`; `*/read` for read on any datasheet) or
    /// `admin`.
    Denied(String),
    NotFound,
    Validation {
        message: String,
        field: Option<String>,
    },
    /// Several validation errors at once, each about one field (`field`, what is wrong): one
    /// GraphQL error each.
    Invalid(Vec<(Option<String>, String)>),
    Conflict(String),
    Unavailable,
    /// Too many login attempts from one client address.
    TooManyAttempts,
    /// The record's processing is restricted (GDPR Art. 18): `VALIDATION` with reason
    /// `RESTRICTED`.
    Restricted,
    /// The organisation's trial ended: administrators may only choose a plan or export.
    TrialEnded,
    /// The organisation is suspended: administrators may only read its status and export.
    Suspended,
    /// The organisation's subscription ended: administrators may read and export until the
    /// migration window closes.
    SubscriptionEnded,
    /// A trial reached its storage limit: it takes no new data until a plan is chosen;
    /// reading, exporting, erasing and restricting still work.
    QuotaExceeded,
    /// Logged once with its cause; the client sees only "internal error".
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// An internal error — unless it says the database could not be reached, which is
    /// `UNAVAILABLE`.
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::from(err.into())
    }

    /// What the client reads.
    pub fn message(&self) -> String {
        match self {
            ApiError::Unauthenticated => {
                "authentication required: the token is missing, invalid or expired".into()
            }
            ApiError::InvalidCredentials => "invalid organisation, email or password".into(),
            ApiError::Forbidden => "not allowed".into(),
            ApiError::Invalid(problems) => problems
                .iter()
                .map(|(_, message)| message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Denied(permission) if permission == "admin" => {
                "not allowed: administrators only".into()
            }
            ApiError::Denied(permission) => {
                format!("not allowed: this needs the `{permission}` permission")
            }
            ApiError::PasswordChangeRequired => {
                "you must change your password before anything else".into()
            }
            ApiError::TwoFactorEnrolmentRequired => {
                "your organisation requires two-factor authentication: enrol before anything else"
                    .into()
            }
            ApiError::InvalidSecondFactor => {
                "the code is wrong or used, or the login expired; log in again if it keeps failing"
                    .into()
            }
            ApiError::NotFound => "not found".into(),
            ApiError::Validation { message, .. } | ApiError::Conflict(message) => message.clone(),
            ApiError::Unavailable => "the service is temporarily unavailable; try again".into(),
            ApiError::TooManyAttempts => {
                "too many login attempts from this address; try again in a minute".into()
            }
            ApiError::TrialEnded => "the organisation's trial has ended: an administrator can \
                choose a plan (choosePlan) or export its data (exportOrganization) until it is \
                deleted"
                .into(),
            ApiError::Suspended => "the organisation is suspended: an administrator can read its \
                status (organization) and export its data (exportOrganization)"
                .into(),
            ApiError::SubscriptionEnded => "the organisation's subscription has ended: \
                administrators can read and export its data until the migration window closes"
                .into(),
            ApiError::QuotaExceeded => "the organisation's trial has reached its storage limit: \
                it takes no new data until an administrator chooses a plan (choosePlan); \
                reading, exporting, erasing and restricting still work"
                .into(),
            ApiError::Internal(_) => "internal error".into(),
            ApiError::Restricted => {
                "processing of this record is restricted: lift the restriction before changing it"
                    .into()
            }
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::Unauthenticated
            | ApiError::InvalidCredentials
            | ApiError::InvalidSecondFactor => Code::Unauthenticated,
            ApiError::Forbidden
            | ApiError::Denied(_)
            | ApiError::PasswordChangeRequired
            | ApiError::TwoFactorEnrolmentRequired => Code::Forbidden,
            ApiError::NotFound => Code::NotFound,
            ApiError::Validation { .. } | ApiError::Invalid(_) | ApiError::Restricted => {
                Code::Validation
            }
            ApiError::Conflict(_) => Code::Conflict,
            ApiError::Unavailable | ApiError::TooManyAttempts => Code::Unavailable,
            ApiError::TrialEnded => Code::TrialEnded,
            ApiError::Suspended => Code::Suspended,
            ApiError::SubscriptionEnded => Code::SubscriptionEnded,
            ApiError::QuotaExceeded => Code::QuotaExceeded,
            ApiError::Internal(_) => Code::Internal,
        }
    }
}

/// Describes an internal error for the log without echoing values: database errors are cut
/// to their SQLSTATE, message and constraint (their DETAIL can quote row values).
pub(crate) fn redacted(err: &anyhow::Error) -> String {
    for cause in err.chain() {
        if let Some(sqlx::Error::Database(db)) = cause.downcast_ref::<sqlx::Error>() {
            return format!(
                "database error {}: {} (constraint {})",
                db.code().unwrap_or_default(),
                db.message(),
                db.constraint().unwrap_or("-")
            );
        }
    }
    err.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

impl ApiError {
    /// Logs an internal error's cause, once, where it is turned into a response.
    pub fn report(&self) {
        if let ApiError::Internal(cause) = self {
            tracing::error!(error = %redacted(cause), "internal error");
        }
    }
}

/// Validation problems collected so that a form learns of all of them at once: each check's
/// `VALIDATION` error is kept (any other error ends the request at once), and
/// [`Problems::done`] answers them together, one GraphQL error each.
#[derive(Default)]
pub(crate) struct Problems(Vec<(Option<String>, String)>);

impl Problems {
    /// Keeps a problem of `field`.
    pub(crate) fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push((Some(field.to_owned()), message.into()));
    }

    /// The check's value, or `None` with its validation problems kept; any other error is
    /// returned.
    pub(crate) fn check<T>(&mut self, result: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(ApiError::Validation { message, field }) => {
                self.0.push((field, message));
                Ok(None)
            }
            Err(ApiError::Invalid(problems)) => {
                self.0.extend(problems);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// `Ok` when no check failed; otherwise every problem kept.
    pub(crate) fn done(mut self) -> Result<(), ApiError> {
        match self.0.len() {
            0 => Ok(()),
            1 => {
                let (field, message) = self.0.remove(0);
                Err(ApiError::Validation { message, field })
            }
            _ => Err(ApiError::Invalid(self.0)),
        }
    }
}

/// Whether a database error says the server could not be reached or used just now (no
/// connection in time, a broken one, a server starting, shutting down or full): the request
/// may be tried again.
fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        // too_many_connections, admin_shutdown, crash_shutdown, cannot_connect_now
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            Some("53300" | "57P01" | "57P02" | "57P03")
        ),
        _ => false,
    }
}

/// The database server an organisation lives on does not answer, as the service's watcher of
/// that server last found: refused before a connection is tried (which would wait for the
/// pool's time-out).
#[derive(Debug, thiserror::Error)]
#[error("the organisation's database server does not answer")]
pub(crate) struct ServerDown;

/// Whether `err` or an error it wraps is an [`unreachable`] database error, or [`ServerDown`].
pub(crate) fn database_unreachable(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |err| err.source()).any(|err| {
        err.is::<ServerDown>() || err.downcast_ref::<sqlx::Error>().is_some_and(unreachable)
    })
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        if database_unreachable(err.as_ref()) {
            tracing::warn!(error = %redacted(&err), "database unavailable");
            return ApiError::Unavailable;
        }
        ApiError::Internal(err)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if unreachable(&err) {
            tracing::warn!(error = %redacted(&anyhow::Error::from(err)), "database unavailable");
            return ApiError::Unavailable;
        }
        ApiError::Internal(err.into())
    }
}

impl From<RecordError> for ApiError {
    fn from(err: RecordError) -> Self {
        match &err {
            RecordError::NotFound => ApiError::NotFound,
            RecordError::StaleVersion { .. } => ApiError::Conflict(err.to_string()),
            RecordError::Restricted => ApiError::Restricted,
            RecordError::NotScheduled(_) => ApiError::Validation {
                message: err.to_string(),
                field: Some("version".into()),
            },
            RecordError::AlreadyRestricted | RecordError::NotRestricted => ApiError::Validation {
                message: err.to_string(),
                field: None,
            },
            RecordError::Erased => ApiError::Validation {
                message: "the record was erased".into(),
                field: None,
            },
            RecordError::Invalid(problems) => ApiError::Invalid(
                problems
                    .iter()
                    .map(|problem| (problem.field().map(api_field_name), record_problem(problem)))
                    .collect(),
            ),
            _ => ApiError::Validation {
                message: record_problem(&err),
                field: err.field().map(api_field_name),
            },
        }
    }
}

impl From<UserError> for ApiError {
    fn from(err: UserError) -> Self {
        match &err {
            UserError::NotFound => ApiError::NotFound,
            UserError::AlreadyRegistered => ApiError::Conflict(err.to_string()),
            UserError::LoginRefused(_) => ApiError::InvalidCredentials,
            UserError::AlreadyDeactivated
            | UserError::AlreadyActive
            | UserError::TwoFactorAlreadyEnabled
            | UserError::TwoFactorNotEnabled
            | UserError::StillActive
            | UserError::AlreadyErased => ApiError::Validation {
                message: err.to_string(),
                field: None,
            },
            UserError::InvalidField { field, .. } => ApiError::validation(field, err.to_string()),
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(err: SubscriptionError) -> Self {
        match &err {
            SubscriptionError::UnknownPlan(_) | SubscriptionError::SamePlan => {
                ApiError::validation("plan", err.to_string())
            }
            SubscriptionError::NotOpened => ApiError::NotFound,
            _ => ApiError::Validation {
                message: err.to_string(),
                field: None,
            },
        }
    }
}

impl From<RoleError> for ApiError {
    fn from(err: RoleError) -> Self {
        match &err {
            RoleError::NotFound => ApiError::NotFound,
            RoleError::AlreadyExists => ApiError::Conflict(err.to_string()),
            RoleError::InvalidName(_) => ApiError::validation("name", err.to_string()),
        }
    }
}

impl From<ApiTokenError> for ApiError {
    fn from(err: ApiTokenError) -> Self {
        match &err {
            ApiTokenError::NotFound => ApiError::NotFound,
            ApiTokenError::AlreadyExists => ApiError::Conflict(err.to_string()),
            ApiTokenError::Refused(_) => ApiError::Unauthenticated,
            ApiTokenError::AlreadyRevoked => ApiError::Validation {
                message: err.to_string(),
                field: None,
            },
            ApiTokenError::InvalidName(_) => ApiError::validation("name", err.to_string()),
            ApiTokenError::ExpiryInPast => ApiError::validation("expiresAt", err.to_string()),
        }
    }
}

impl From<custos_domain::WebhookError> for ApiError {
    fn from(err: custos_domain::WebhookError) -> Self {
        use custos_domain::WebhookError;
        match &err {
            WebhookError::NotFound => ApiError::NotFound,
            WebhookError::AlreadyExists => ApiError::Conflict(err.to_string()),
            WebhookError::Removed => ApiError::Validation {
                message: err.to_string(),
                field: None,
            },
            WebhookError::InvalidUrl(_) => ApiError::validation("url", err.to_string()),
            WebhookError::NoTopics => ApiError::validation("events", err.to_string()),
            WebhookError::Invalid { field, .. } => ApiError::validation(field, err.to_string()),
        }
    }
}

impl From<FieldSchemaError> for ApiError {
    fn from(err: FieldSchemaError) -> Self {
        let field = match &err {
            FieldSchemaError::UnknownField(_) => return ApiError::NotFound,
            FieldSchemaError::InvalidKey
            | FieldSchemaError::KeyTaken(_)
            | FieldSchemaError::Retired(_)
            | FieldSchemaError::TooMany => "key",
            FieldSchemaError::Invalid { field, .. } => field,
            FieldSchemaError::Options => "options",
            FieldSchemaError::Several(problems) => return several(problems),
        };
        ApiError::validation(field, err.to_string())
    }
}

impl From<DataExportError> for ApiError {
    fn from(err: DataExportError) -> Self {
        ApiError::Conflict(err.to_string())
    }
}

impl From<ConsentError> for ApiError {
    fn from(err: ConsentError) -> Self {
        let field = match &err {
            ConsentError::InvalidPurpose | ConsentError::NotGiven(_) => Some("purpose"),
            ConsentError::ExpiryInPast => Some("expiresOn"),
            ConsentError::InvalidNote { field, .. } => Some(*field),
            ConsentError::Erased => None,
        };
        ApiError::Validation {
            message: err.to_string(),
            field: field.map(str::to_owned),
        }
    }
}

impl From<RetentionError> for ApiError {
    fn from(err: RetentionError) -> Self {
        let field = match &err {
            RetentionError::NotFound => return ApiError::NotFound,
            RetentionError::AlreadyExists => return ApiError::Conflict(err.to_string()),
            RetentionError::AlreadyRemoved => "id",
            RetentionError::InvalidName(_) => "name",
            RetentionError::InvalidTrigger(_) => "trigger",
            RetentionError::PeriodTooLong => "periodDays",
            RetentionError::InvalidPurpose => "unlessConsent",
            RetentionError::Several(problems) => return several(problems),
        };
        ApiError::validation(field, err.to_string())
    }
}

impl From<IncidentError> for ApiError {
    fn from(err: IncidentError) -> Self {
        let field = match &err {
            IncidentError::NotFound => return ApiError::NotFound,
            IncidentError::AlreadyExists => return ApiError::Conflict(err.to_string()),
            IncidentError::Invalid { field, .. } | IncidentError::InFuture(field) => *field,
            IncidentError::NoDatasheet => "datasheets",
            IncidentError::WindowReversed => "windowTo",
            IncidentError::BeforeDetection | IncidentError::AlreadyNotified => "at",
            IncidentError::Several(problems) => return several(problems),
        };
        ApiError::validation(field, err.to_string())
    }
}

/// Several domain errors told at once, each as its own field's problem.
fn several<E: Clone + Into<ApiError>>(problems: &[E]) -> ApiError {
    let mut all = Problems::default();
    for problem in problems {
        if let Err(err) = all.check::<()>(Err(problem.clone().into())) {
            return err;
        }
    }
    match all.done() {
        Err(err) => err,
        Ok(()) => ApiError::internal(anyhow::anyhow!("no problem among several")),
    }
}

impl From<std::convert::Infallible> for ApiError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl<E> From<AggregateError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError>,
{
    fn from(err: AggregateError<E>) -> Self {
        match err {
            AggregateError::UserError(err) => err.into(),
            AggregateError::AggregateConflict => {
                ApiError::Conflict("the record was changed concurrently; reload and retry".into())
            }
            AggregateError::DatabaseConnectionError(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable
            }
            AggregateError::UnexpectedError(cause) if database_unreachable(cause.as_ref()) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable
            }
            AggregateError::DeserializationError(cause)
            | AggregateError::UnexpectedError(cause) => {
                ApiError::Internal(anyhow::Error::from_boxed(cause))
            }
        }
    }
}

/// A record field's name as the API spells it: built-in fields in camel case (`startDate`),
/// custom fields as they are (`custom.shirt_size`).
pub(crate) fn api_field_name(name: &str) -> String {
    if name.starts_with(custos_domain::custom_field::CUSTOM_PREFIX) {
        name.to_owned()
    } else {
        snake_to_camel(name)
    }
}

/// What is wrong with a record's values, naming the field as the API does (`startDate`, not
/// the domain's `start_date`).
fn record_problem(err: &RecordError) -> String {
    match err {
        RecordError::UnknownField(field) => format!("unknown field `{}`", api_field_name(field)),
        RecordError::MissingField(field) => {
            format!("field `{}` is required", api_field_name(field))
        }
        RecordError::InvalidField { field, reason } => {
            format!("field `{}` {reason}", api_field_name(field))
        }
        other => other.to_string(),
    }
}

/// `first_name` → `firstName`: domain field names as the GraphQL API spells them.
pub(crate) fn snake_to_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use custos_domain::ValueError;

    #[test]
    fn an_unreachable_database_is_unavailable_however_the_error_arrives() {
        let direct: ApiError = sqlx::Error::PoolTimedOut.into();
        assert_eq!(direct.code(), Code::Unavailable);
        let wrapped: ApiError = anyhow::Error::from(sqlx::Error::PoolTimedOut)
            .context("loading the tenant")
            .into();
        assert_eq!(wrapped.code(), Code::Unavailable);
        // postgres-es reports a pool time-out as an unexpected error.
        let store: ApiError =
            AggregateError::<RecordError>::UnexpectedError(Box::new(sqlx::Error::PoolTimedOut))
                .into();
        assert_eq!(store.code(), Code::Unavailable);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let io: ApiError = anyhow::Error::from(sqlx::Error::Io(refused)).into();
        assert_eq!(io.code(), Code::Unavailable);
        // Anything else stays internal.
        let other: ApiError = anyhow::anyhow!("a bug").into();
        assert_eq!(other.code(), Code::Internal);
        let decode: ApiError = sqlx::Error::RowNotFound.into();
        assert_eq!(decode.code(), Code::Internal);
    }

    #[test]
    fn domain_errors_map_to_codes_and_name_the_field() {
        let err: ApiError = RecordError::InvalidField {
            field: "first_name".into(),
            reason: ValueError::Empty,
        }
        .into();
        assert_eq!(err.code(), Code::Validation);
        assert!(matches!(&err, ApiError::Validation { field: Some(f), .. } if f == "firstName"));
        let stale: ApiError = AggregateError::UserError(RecordError::StaleVersion {
            expected: 1,
            actual: 2,
        })
        .into();
        assert_eq!(stale.code(), Code::Conflict);
        let conflict: ApiError = AggregateError::<RecordError>::AggregateConflict.into();
        assert_eq!(conflict.code(), Code::Conflict);
        let missing: ApiError = AggregateError::UserError(RecordError::NotFound).into();
        assert_eq!(missing.code(), Code::NotFound);
    }

    #[test]
    fn field_names_are_camel_cased() {
        assert_eq!(snake_to_camel("start_date"), "startDate");
        assert_eq!(snake_to_camel("email"), "email");
    }
}
