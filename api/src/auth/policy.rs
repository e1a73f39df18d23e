//! Authorization in one place: the policy for every root field of the schema, and the checks
//! that apply it. No GraphQL here: `graphql::authorization` enforces it before any resolver
//! runs. A root field without a policy is refused (fail closed), and the authorization matrix
//! test fails until it has one.

use custos_domain::{Datasheet, Grant, Permission, SubscriptionStatus as Standing};

use crate::auth::principal::{Principal, Subject};
use crate::error::ApiError;

/// Who may call a root field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Anyone, signed in or not.
    Public,
    /// Any signed-in user, even one who must still replace a temporary password or enrol a
    /// second factor the organisation requires.
    Session,
    /// Any signed-in user whose password is current and who has a second factor if the
    /// organisation requires one.
    Signed,
    /// Administrators only.
    Admin,
    /// Users and API tokens holding this permission on this datasheet (administrators hold
    /// all). With the next two, the only rules API tokens can satisfy.
    Grant(Datasheet, Permission),
    /// Holders of every one of these grants.
    AllOf(&'static [(Datasheet, Permission)]),
    /// Fields about one record, or one datasheet, named by an argument: holders of this
    /// permission on some datasheet pass here, and the field's resolver checks the record's
    /// (or the argument's) datasheet with [`check_record`] once it knows it.
    OnDatasheet(Permission),
}

/// The policy: the rule for each root field. `None` means the field has no policy and is refused.
pub(crate) fn rule(parent_type: &str, field: &str) -> Option<Rule> {
    use Datasheet::*;
    use Permission::*;
    let employees = |p| Rule::Grant(Employees, p);
    Some(match (parent_type, field) {
        (_, "__typename" | "__schema" | "__type") => Rule::Public,
        ("Mutation", "signUp" | "login" | "completeLogin") => Rule::Public,
        ("Query", "me")
        | (
            "Mutation",
            "logout"
            | "logoutEverywhere"
            | "changePassword"
            | "beginTwoFactorEnrolment"
            | "confirmTwoFactorEnrolment",
        ) => Rule::Session,
        ("Mutation", "disableTwoFactor" | "regenerateRecoveryCodes") => Rule::Signed,
        // Others' sessions only for administrators (checked in the resolver and the use case).
        ("Query", "sessions") | ("Mutation", "endSession") => Rule::Signed,
        // Non-administrators see only their own history (checked in the resolver).
        ("Query", "organization" | "loginHistory") | ("Mutation", "updateMe") => Rule::Signed,
        ("Query", "users" | "user" | "roles" | "role" | "apiTokens") => Rule::Admin,
        (
            "Mutation",
            "createUser"
            | "updateUser"
            | "deactivateUser"
            | "eraseUser"
            | "reactivateUser"
            | "resetUserPassword"
            | "setAdministrator"
            | "unlockUser"
            | "createRole"
            | "renameRole"
            | "grantPermission"
            | "revokePermission"
            | "deleteRole"
            | "resetTwoFactor"
            | "setTwoFactorRequired"
            | "createApiToken"
            | "revokeApiToken",
        ) => Rule::Admin,
        ("Query", "employees" | "employee") => employees(Read),
        ("Mutation", "createEmployee") => employees(Create),
        ("Mutation", "updateEmployee") => employees(Update),
        ("Query", "contacts" | "contact") => Rule::Grant(Contacts, Read),
        ("Mutation", "createContact") => Rule::Grant(Contacts, Create),
        ("Mutation", "updateContact") => Rule::Grant(Contacts, Update),
        ("Query", "applicants" | "applicant") => Rule::Grant(Applicants, Read),
        ("Mutation", "createApplicant") => Rule::Grant(Applicants, Create),
        ("Mutation", "updateApplicant") => Rule::Grant(Applicants, Update),
        ("Mutation", "hireApplicant") => Rule::AllOf(&[(Applicants, Update), (Employees, Create)]),
        ("Mutation", "archiveRecord" | "restoreRecord") => Rule::OnDatasheet(Archive),
        ("Mutation", "cancelScheduledChange") => Rule::OnDatasheet(Update),
        ("Mutation", "eraseRecord" | "restrictRecord" | "liftRestriction") => {
            Rule::OnDatasheet(Erase)
        }
        ("Query", "recordHistory" | "recordAsOf" | "recordDiff") => Rule::OnDatasheet(History),
        ("Query", "customFieldDefinitions") => Rule::OnDatasheet(Read),
        // Results are limited to the datasheets the caller may read (in the resolver).
        ("Query", "findSubject") | ("Subscription", "recordChanged") => Rule::OnDatasheet(Read),
        ("Query", "report") => Rule::OnDatasheet(Report),
        ("Mutation", "exportRecords") => Rule::OnDatasheet(Export),
        ("Mutation", "importRecords") => Rule::OnDatasheet(Create),
        ("Query", "headcount") => employees(Report),
        ("Mutation", "addCustomField" | "updateCustomField" | "retireCustomField") => Rule::Admin,
        // Auditors: `history` on every datasheet (the whole store is about all of them).
        (
            "Query",
            "checkpoints" | "verifyIntegrity" | "eventProof" | "consistencyProof" | "userHistory"
            | "roleHistory",
        ) => Rule::AllOf(&[
            (Employees, History),
            (Contacts, History),
            (Applicants, History),
        ]),
        ("Mutation", "createCheckpoint" | "exportOrganization") => Rule::Admin,
        ("Mutation", "choosePlan" | "cancelSubscription" | "withdrawCancellation") => Rule::Admin,
        ("Query", "auditLog") | ("Subscription", "auditFeed") => Rule::AllOf(&[
            (Employees, History),
            (Contacts, History),
            (Applicants, History),
        ]),
        ("Mutation", "exportAuditLog") => Rule::AllOf(&[
            (Employees, History),
            (Contacts, History),
            (Applicants, History),
            (Employees, Export),
            (Contacts, Export),
            (Applicants, Export),
        ]),
        ("Query", "consents") => Rule::OnDatasheet(Read),
        ("Mutation", "giveConsent" | "withdrawConsent") => Rule::OnDatasheet(Update),
        // `export` on the datasheet of every record the trail covers (in the use case).
        ("Mutation", "subjectTrail") => Rule::OnDatasheet(Export),
        ("Query", "retentionPolicies" | "retentionSchedule" | "incidents" | "incident") => {
            Rule::Admin
        }
        (
            "Mutation",
            "defineRetentionPolicy"
            | "removeRetentionPolicy"
            | "runRetention"
            | "recordIncident"
            | "recordAuthorityNotified"
            | "recordSubjectsNotified"
            | "notifySubjects"
            | "exportNotificationList",
        ) => Rule::Admin,
        ("Query", "notifications") => Rule::Admin,
        ("Query", "webhooks")
        | (
            "Mutation",
            "registerWebhook" | "updateWebhook" | "disableWebhook" | "enableWebhook"
            | "removeWebhook" | "testWebhook",
        ) => Rule::Admin,
        _ => return None,
    })
}

impl Principal {
    /// Whether the principal holds `permission` on `datasheet`.
    pub(crate) fn may(&self, datasheet: Datasheet, permission: Permission) -> bool {
        self.is_admin() || self.grants.contains(&Grant::new(datasheet, permission))
    }

    /// The permission of a data rule (`Grant`, `AllOf`, `OnDatasheet`) the principal lacks,
    /// as `extensions.permission` names it; `None` if it satisfies the rule. `Admin` names
    /// `admin`.
    fn lacks(&self, rule: Rule) -> Option<String> {
        let named = |datasheet: Datasheet, permission: Permission| {
            format!("{}/{}", datasheet.as_str(), permission.as_str())
        };
        match rule {
            Rule::Grant(datasheet, permission) => {
                (!self.may(datasheet, permission)).then(|| named(datasheet, permission))
            }
            Rule::AllOf(grants) => grants
                .iter()
                .find(|(d, p)| !self.may(*d, *p))
                .map(|(d, p)| named(*d, *p)),
            Rule::OnDatasheet(permission) => {
                (!Datasheet::ALL.iter().any(|d| self.may(*d, permission)))
                    .then(|| format!("*/{}", permission.as_str()))
            }
            Rule::Admin => Some("admin".to_owned()),
            Rule::Public | Rule::Session | Rule::Signed => None,
        }
    }
}

/// The second half of an `OnDatasheet` rule: the principal must hold `permission` on the
/// datasheet of the record the field is about. The refusal does not name the datasheet: it
/// would tell which datasheet a record the caller may not see is in (whether a person is a
/// job applicant, say).
pub(crate) fn check_record(
    principal: &Principal,
    datasheet: Datasheet,
    permission: Permission,
) -> Result<(), ApiError> {
    refused_on(principal, datasheet, permission).map_or(Ok(()), |_| Err(ApiError::Forbidden))
}

/// The second half of an `OnDatasheet` rule when the caller named the datasheet (an
/// argument): the refusal names the permission it needs (`employees/export`).
pub(crate) fn check_datasheet(
    principal: &Principal,
    datasheet: Datasheet,
    permission: Permission,
) -> Result<(), ApiError> {
    refused_on(principal, datasheet, permission)
        .map_or(Ok(()), |needed| Err(ApiError::Denied(needed)))
}

/// The permission `principal` lacks for `permission` on `datasheet` (logged as a denial), or
/// `None` if it holds it.
fn refused_on(
    principal: &Principal,
    datasheet: Datasheet,
    permission: Permission,
) -> Option<String> {
    if principal.may(datasheet, permission) {
        return None;
    }
    tracing::warn!(
        tenant.id = %principal.tenant.id,
        actor.id = %principal.actor().id(),
        datasheet = datasheet.as_str(),
        permission = permission.as_str(),
        "security: access to a record denied"
    );
    Some(format!("{}/{}", datasheet.as_str(), permission.as_str()))
}

/// What an organisation that is not served in full still lets its users do: everyone may log
/// out; administrators alone may sign in and
/// - after the trial ended: read the organisation (`organization`, `me`), choose a plan and
///   export everything;
/// - while suspended: read the organisation's status and export everything;
/// - in the migration window: read anything and export (but change nothing).
///
/// Replacing a temporary password and enrolling a required second factor stay open to them,
/// since they come before anything else. Everyone else, and every API token, gets the
/// standing's code (`TRIAL_ENDED`, `SUSPENDED`, `SUBSCRIPTION_ENDED`). A trial whose storage
/// reached its limit refuses what adds data with `QUOTA_EXCEEDED`, to everyone.
pub(crate) fn check_standing(
    parent_type: &str,
    field: &str,
    principal: &Principal,
) -> Result<(), ApiError> {
    let standing = principal.tenant.standing();
    let refusal = match standing {
        Standing::Trial
            if principal.tenant.over_storage_limit() && adds_data(parent_type, field) =>
        {
            return Err(ApiError::QuotaExceeded)
        }
        Standing::Trial | Standing::Active | Standing::Cancelling => return Ok(()),
        Standing::Expired => ApiError::TrialEnded,
        Standing::Suspended => ApiError::Suspended,
        Standing::Migration => ApiError::SubscriptionEnded,
        Standing::Purged => return Err(ApiError::Unauthenticated),
    };
    let always = matches!(field, "__typename" | "__schema" | "__type")
        || matches!(
            (parent_type, field),
            ("Mutation", "logout" | "logoutEverywhere")
        );
    if always {
        return Ok(());
    }
    if !principal.is_admin() {
        return Err(refusal);
    }
    let getting_ready = matches!(
        (parent_type, field),
        ("Query", "me" | "organization" | "notifications")
            | (
                "Mutation",
                "changePassword"
                    | "beginTwoFactorEnrolment"
                    | "confirmTwoFactorEnrolment"
                    | "exportOrganization"
            )
    );
    let allowed = getting_ready
        || match standing {
            Standing::Expired => (parent_type, field) == ("Mutation", "choosePlan"),
            Standing::Migration => {
                matches!(parent_type, "Query" | "Subscription")
                    || matches!(
                        field,
                        "exportRecords"
                            | "exportAuditLog"
                            | "subjectTrail"
                            | "exportNotificationList"
                            | "notifySubjects"
                    )
            }
            _ => false,
        };
    if allowed {
        Ok(())
    } else {
        Err(refusal)
    }
}

/// Whether a mutation adds data: what a trial at its storage limit refuses. Erasing,
/// restricting, withdrawing consent, archiving, deactivating, recording breaches and
/// exporting go on (they are rights, duties or the way out).
fn adds_data(parent_type: &str, field: &str) -> bool {
    parent_type == "Mutation"
        && matches!(
            field,
            "createEmployee"
                | "updateEmployee"
                | "createContact"
                | "updateContact"
                | "createApplicant"
                | "updateApplicant"
                | "hireApplicant"
                | "importRecords"
                | "restoreRecord"
                | "giveConsent"
                | "addCustomField"
                | "updateCustomField"
                | "createUser"
                | "updateUser"
                | "createRole"
                | "renameRole"
                | "grantPermission"
                | "createApiToken"
                | "defineRetentionPolicy"
                | "updateMe"
        )
}

/// Whether a user may sign in to an organisation in its standing: in full service anyone;
/// otherwise administrators only (see [`check_standing`]).
pub(crate) fn check_sign_in(standing: Standing, is_admin: bool) -> Result<(), ApiError> {
    match standing {
        Standing::Trial | Standing::Active | Standing::Cancelling => Ok(()),
        _ if is_admin && standing != Standing::Purged => Ok(()),
        Standing::Expired => Err(ApiError::TrialEnded),
        Standing::Suspended => Err(ApiError::Suspended),
        Standing::Migration => Err(ApiError::SubscriptionEnded),
        Standing::Purged => Err(ApiError::InvalidCredentials),
    }
}

/// Checks `rule` for the request's principal.
pub(crate) fn check(rule: Option<Rule>, principal: Option<&Principal>) -> Result<(), ApiError> {
    let Some(rule) = rule else {
        return Err(ApiError::Forbidden);
    };
    if rule == Rule::Public {
        return Ok(());
    }
    let principal = principal.ok_or(ApiError::Unauthenticated)?;
    let user = match &principal.subject {
        Subject::User { user, .. } => user,
        Subject::ApiToken(_) => {
            return match principal.lacks(rule) {
                None if !matches!(rule, Rule::Public | Rule::Session | Rule::Signed) => Ok(()),
                // API tokens satisfy only data rules.
                None => Err(ApiError::Forbidden),
                Some(permission) => Err(ApiError::Denied(permission)),
            };
        }
    };
    if rule == Rule::Session {
        return Ok(());
    }
    if user.must_change_password {
        return Err(ApiError::PasswordChangeRequired);
    }
    if principal.two_factor_required && !user.two_factor {
        return Err(ApiError::TwoFactorEnrolmentRequired);
    }
    let lacking = match rule {
        Rule::Public | Rule::Session | Rule::Signed => None,
        Rule::Admin => (!user.is_admin).then(|| "admin".to_owned()),
        Rule::Grant(..) | Rule::AllOf(_) | Rule::OnDatasheet(_) => principal.lacks(rule),
    };
    match lacking {
        None => Ok(()),
        Some(permission) => Err(ApiError::Denied(permission)),
    }
}
