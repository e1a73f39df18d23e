//! The `User` aggregate: a person who logs in to a tenant. Its stream is also the user's login
//! history: every success, failure and logout is an event on it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Email, PersonName, ValueError};

/// The longest user agent kept in a login event; longer ones are cut (on a char boundary).
pub const MAX_USER_AGENT: usize = 512;

/// Brute-force protection: this many failed logins within `FAILURE_WINDOW` lock the account
/// for `LOCK_DURATION`.
pub const MAX_FAILURES: usize = 10;
pub const FAILURE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::minutes(15);
pub const LOCK_DURATION: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// The state of one user, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    email: Option<Email>,
    name: Option<PersonName>,
    administrator: bool,
    deactivated: bool,
    roles: BTreeSet<Uuid>,
    must_change_password: bool,
    /// Failed logins since the last success, unlock or lock, within the failure window.
    failures: Vec<DateTime<Utc>>,
    locked_until: Option<DateTime<Utc>>,
    /// The current password hash, so a login checked against an older one is refused.
    password_hash: Option<String>,
    /// Whether logins need a second factor (TOTP or a recovery code). The secret itself is
    /// kept outside the event log, encrypted.
    two_factor: bool,
    /// The user's personal data was erased: the account is gone for good.
    erased: bool,
    version: u64,
}

/// Where a login attempt came from. Both parts are the user's personal data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOrigin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl LoginOrigin {
    pub fn new(ip: Option<String>, user_agent: Option<String>) -> Self {
        let user_agent = user_agent.map(|ua| ua.chars().take(MAX_USER_AGENT).collect());
        Self { ip, user_agent }
    }
}

/// Why a login attempt failed: a class, never the password that was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    WrongPassword,
    /// The password was right but the user may not log in.
    Deactivated,
    /// The account was locked after repeated failures; the password was not checked.
    Locked,
    /// The password was right but the TOTP or recovery code was not.
    WrongSecondFactor,
    /// The password was right but the organisation admits only its administrators now (its
    /// trial ended, it is suspended, or its subscription ended). Not counted toward a lock.
    OrganizationRestricted,
}

/// The second factor that completed a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecondFactor {
    Totp,
    RecoveryCode,
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    /// Creates the user. The password arrives already hashed (argon2id, by the service): the
    /// domain never sees a password.
    Register {
        email: String,
        name: String,
        password_hash: String,
        administrator: bool,
        roles: BTreeSet<Uuid>,
        /// Set when an administrator chose the password: the user must replace it.
        must_change_password: bool,
    },
    /// Changes any of name, email and roles, all or nothing (one commit). The service checks
    /// first that no other user has the email and that the roles exist.
    Update {
        name: Option<String>,
        email: Option<String>,
        roles: Option<BTreeSet<Uuid>>,
    },
    /// The service checks first that an active administrator remains.
    SetAdministrator {
        administrator: bool,
    },
    /// The service checks first that an active administrator remains.
    Deactivate,
    Reactivate,
    /// An administrator set a temporary password; the user must replace it at next login.
    ResetPassword {
        password_hash: String,
    },
    /// The user chose a new password.
    ChangePassword {
        password_hash: String,
    },
    /// A login whose password checked out at `at`. The aggregate has the last word: it
    /// refuses (`LoginRefused`) when the account is deactivated or locked, or when
    /// `verified_hash` is no longer the current password (reset or changed meanwhile), so a
    /// decision taken on a stale read model never opens a session. `None` skips the hash check
    /// (the sign-up that just registered the user). A user enrolled in two-factor
    /// authentication needs `second_factor`.
    RecordLoginSuccess {
        session_id: Uuid,
        origin: LoginOrigin,
        at: DateTime<Utc>,
        verified_hash: Option<String>,
        second_factor: Option<SecondFactor>,
    },
    /// A failed attempt at `at`; the tenth within the failure window locks the account.
    RecordLoginFailure {
        reason: LoginFailure,
        origin: LoginOrigin,
        at: DateTime<Utc>,
    },
    /// An administrator lifts a lock before it expires.
    Unlock,
    /// The user confirmed a TOTP code from a new authenticator (the service checked it).
    EnableTwoFactor,
    /// The user turned two-factor authentication off (the service checked their password
    /// and that the organisation does not require it).
    DisableTwoFactor,
    /// An administrator removed the user's second factor (a lost device); the user may
    /// enrol again.
    ResetTwoFactor,
    /// The user replaced their recovery codes.
    RegenerateRecoveryCodes,
    /// An administrator erases a deactivated user's personal data (the service then destroys
    /// the user's key). Irreversible.
    Erase,
    RecordLogout {
        session_id: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        email: Email,
        name: PersonName,
        password_hash: String,
        administrator: bool,
        #[serde(default)]
        roles: BTreeSet<Uuid>,
        #[serde(default)]
        must_change_password: bool,
    },
    UserRenamed {
        name: PersonName,
    },
    EmailChanged {
        email: Email,
    },
    RolesAssigned {
        roles: BTreeSet<Uuid>,
    },
    AdministratorGranted,
    AdministratorRevoked,
    UserDeactivated,
    UserReactivated,
    PasswordReset {
        password_hash: String,
    },
    PasswordChanged {
        password_hash: String,
    },
    LoginSucceeded {
        session_id: Uuid,
        origin: LoginOrigin,
        #[serde(default)]
        second_factor: Option<SecondFactor>,
    },
    LoginFailed {
        reason: LoginFailure,
        origin: LoginOrigin,
        at: DateTime<Utc>,
    },
    LoginLocked {
        until: DateTime<Utc>,
    },
    LoginUnlocked,
    LoggedOut {
        session_id: Uuid,
    },
    TwoFactorEnabled,
    TwoFactorDisabled,
    TwoFactorReset,
    RecoveryCodesRegenerated,
    /// The user's personal data was erased.
    UserErased,
    /// An event whose content was erased with the user: it happened, nothing more is known.
    Redacted,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("the user already exists")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
    #[error("the user is already deactivated")]
    AlreadyDeactivated,
    #[error("the user is already active")]
    AlreadyActive,
    #[error("the login was refused")]
    LoginRefused(LoginFailure),
    #[error("two-factor authentication is already on")]
    TwoFactorAlreadyEnabled,
    #[error("two-factor authentication is not on")]
    TwoFactorNotEnabled,
    #[error("only a deactivated user can be erased")]
    StillActive,
    #[error("the user was erased already")]
    AlreadyErased,
    #[error("field `{field}` {reason}")]
    InvalidField { field: String, reason: ValueError },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::UserRenamed { .. } => "UserRenamed",
            UserEvent::EmailChanged { .. } => "EmailChanged",
            UserEvent::RolesAssigned { .. } => "RolesAssigned",
            UserEvent::AdministratorGranted => "AdministratorGranted",
            UserEvent::AdministratorRevoked => "AdministratorRevoked",
            UserEvent::UserDeactivated => "UserDeactivated",
            UserEvent::UserReactivated => "UserReactivated",
            UserEvent::PasswordReset { .. } => "PasswordReset",
            UserEvent::PasswordChanged { .. } => "PasswordChanged",
            UserEvent::LoginSucceeded { .. } => "LoginSucceeded",
            UserEvent::LoginFailed { .. } => "LoginFailed",
            UserEvent::LoginLocked { .. } => "LoginLocked",
            UserEvent::LoginUnlocked => "LoginUnlocked",
            UserEvent::LoggedOut { .. } => "LoggedOut",
            UserEvent::TwoFactorEnabled => "TwoFactorEnabled",
            UserEvent::TwoFactorDisabled => "TwoFactorDisabled",
            UserEvent::TwoFactorReset => "TwoFactorReset",
            UserEvent::RecoveryCodesRegenerated => "RecoveryCodesRegenerated",
            UserEvent::UserErased => "UserErased",
            UserEvent::Redacted => "Redacted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl User {
    pub fn email(&self) -> Option<&Email> {
        self.email.as_ref()
    }

    pub fn name(&self) -> Option<&PersonName> {
        self.name.as_ref()
    }

    pub fn is_administrator(&self) -> bool {
        self.administrator
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_active(&self) -> bool {
        !self.deactivated
    }

    pub fn roles(&self) -> &BTreeSet<Uuid> {
        &self.roles
    }

    pub fn must_change_password(&self) -> bool {
        self.must_change_password
    }

    pub fn has_two_factor(&self) -> bool {
        self.two_factor
    }

    /// Whether a lock is in force at `at`.
    pub fn is_locked_at(&self, at: DateTime<Utc>) -> bool {
        self.locked_until.is_some_and(|until| until > at)
    }

    fn existing(&self) -> Result<(), UserError> {
        if self.erased {
            return Err(UserError::NotFound);
        }
        self.email.as_ref().map(|_| ()).ok_or(UserError::NotFound)
    }

    pub fn is_erased(&self) -> bool {
        self.erased
    }
}

fn invalid(field: &str) -> impl FnOnce(ValueError) -> UserError + '_ {
    move |reason| UserError::InvalidField {
        field: field.to_owned(),
        reason,
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "user";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        let event = match command {
            UserCommand::Register {
                email,
                name,
                password_hash,
                administrator,
                roles,
                must_change_password,
            } => {
                if self.email.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                UserEvent::UserRegistered {
                    email: Email::parse(&email).map_err(invalid("email"))?,
                    name: PersonName::parse(&name).map_err(invalid("name"))?,
                    password_hash,
                    administrator,
                    roles,
                    must_change_password,
                }
            }
            UserCommand::Update { name, email, roles } => {
                self.existing()?;
                let name = name
                    .map(|n| PersonName::parse(&n))
                    .transpose()
                    .map_err(invalid("name"))?;
                let email = email
                    .map(|e| Email::parse(&e))
                    .transpose()
                    .map_err(invalid("email"))?;
                let mut events = Vec::new();
                if let Some(name) = name.filter(|n| Some(n) != self.name.as_ref()) {
                    events.push(UserEvent::UserRenamed { name });
                }
                if let Some(email) = email.filter(|e| Some(e) != self.email.as_ref()) {
                    events.push(UserEvent::EmailChanged { email });
                }
                if let Some(roles) = roles.filter(|r| *r != self.roles) {
                    events.push(UserEvent::RolesAssigned { roles });
                }
                for event in events {
                    sink.write(event, self).await;
                }
                return Ok(());
            }
            UserCommand::SetAdministrator { administrator } => {
                self.existing()?;
                match (self.administrator, administrator) {
                    (false, true) => UserEvent::AdministratorGranted,
                    (true, false) => UserEvent::AdministratorRevoked,
                    _ => return Ok(()),
                }
            }
            UserCommand::Deactivate => {
                self.existing()?;
                if self.deactivated {
                    return Err(UserError::AlreadyDeactivated);
                }
                UserEvent::UserDeactivated
            }
            UserCommand::Reactivate => {
                self.existing()?;
                if !self.deactivated {
                    return Err(UserError::AlreadyActive);
                }
                UserEvent::UserReactivated
            }
            UserCommand::ResetPassword { password_hash } => {
                self.existing()?;
                UserEvent::PasswordReset { password_hash }
            }
            UserCommand::ChangePassword { password_hash } => {
                self.existing()?;
                UserEvent::PasswordChanged { password_hash }
            }
            UserCommand::RecordLoginSuccess {
                session_id,
                origin,
                at,
                verified_hash,
                second_factor,
            } => {
                self.existing()?;
                if self.deactivated {
                    return Err(UserError::LoginRefused(LoginFailure::Deactivated));
                }
                if self.is_locked_at(at) {
                    return Err(UserError::LoginRefused(LoginFailure::Locked));
                }
                if verified_hash.is_some_and(|hash| Some(hash) != self.password_hash) {
                    return Err(UserError::LoginRefused(LoginFailure::WrongPassword));
                }
                if self.two_factor && second_factor.is_none() {
                    return Err(UserError::LoginRefused(LoginFailure::WrongSecondFactor));
                }
                UserEvent::LoginSucceeded {
                    session_id,
                    origin,
                    second_factor,
                }
            }
            UserCommand::RecordLoginFailure { reason, origin, at } => {
                self.existing()?;
                sink.write(UserEvent::LoginFailed { reason, origin, at }, self)
                    .await;
                let recent = self
                    .failures
                    .iter()
                    .filter(|t| **t > at - FAILURE_WINDOW)
                    .count();
                let counts = reason != LoginFailure::OrganizationRestricted;
                if counts && recent >= MAX_FAILURES && !self.is_locked_at(at) {
                    sink.write(
                        UserEvent::LoginLocked {
                            until: at + LOCK_DURATION,
                        },
                        self,
                    )
                    .await;
                }
                return Ok(());
            }
            UserCommand::Unlock => {
                self.existing()?;
                if self.locked_until.is_none() {
                    return Ok(());
                }
                UserEvent::LoginUnlocked
            }
            UserCommand::RecordLogout { session_id } => {
                self.existing()?;
                UserEvent::LoggedOut { session_id }
            }
            UserCommand::EnableTwoFactor => {
                self.existing()?;
                if self.two_factor {
                    return Err(UserError::TwoFactorAlreadyEnabled);
                }
                UserEvent::TwoFactorEnabled
            }
            UserCommand::DisableTwoFactor => {
                self.existing()?;
                if !self.two_factor {
                    return Err(UserError::TwoFactorNotEnabled);
                }
                UserEvent::TwoFactorDisabled
            }
            UserCommand::ResetTwoFactor => {
                self.existing()?;
                if !self.two_factor {
                    return Err(UserError::TwoFactorNotEnabled);
                }
                UserEvent::TwoFactorReset
            }
            UserCommand::Erase => {
                if self.erased {
                    return Err(UserError::AlreadyErased);
                }
                self.existing()?;
                if !self.deactivated {
                    return Err(UserError::StillActive);
                }
                UserEvent::UserErased
            }
            UserCommand::RegenerateRecoveryCodes => {
                self.existing()?;
                if !self.two_factor {
                    return Err(UserError::TwoFactorNotEnabled);
                }
                UserEvent::RecoveryCodesRegenerated
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        self.version += 1;
        match event {
            UserEvent::UserRegistered {
                email,
                name,
                administrator,
                roles,
                must_change_password,
                password_hash,
            } => {
                self.password_hash = Some(password_hash);
                self.email = Some(email);
                self.name = Some(name);
                self.administrator = administrator;
                self.roles = roles;
                self.must_change_password = must_change_password;
            }
            UserEvent::UserRenamed { name } => self.name = Some(name),
            UserEvent::EmailChanged { email } => self.email = Some(email),
            UserEvent::RolesAssigned { roles } => self.roles = roles,
            UserEvent::AdministratorGranted => self.administrator = true,
            UserEvent::AdministratorRevoked => self.administrator = false,
            UserEvent::UserDeactivated => self.deactivated = true,
            UserEvent::UserReactivated => self.deactivated = false,
            UserEvent::PasswordReset { password_hash } => {
                self.password_hash = Some(password_hash);
                self.must_change_password = true;
            }
            UserEvent::PasswordChanged { password_hash } => {
                self.password_hash = Some(password_hash);
                self.must_change_password = false;
            }
            // Attempts during a lock do not count toward the next one: otherwise an attacker
            // could keep an account locked for ever with one guess per lock period.
            UserEvent::LoginFailed {
                reason: LoginFailure::Locked | LoginFailure::OrganizationRestricted,
                ..
            } => {}
            UserEvent::LoginFailed { at, .. } => {
                self.failures.retain(|t| *t > at - FAILURE_WINDOW);
                self.failures.push(at);
            }
            UserEvent::LoginSucceeded { .. } => self.failures.clear(),
            UserEvent::LoginLocked { until } => {
                self.locked_until = Some(until);
                self.failures.clear();
            }
            UserEvent::LoginUnlocked => {
                self.locked_until = None;
                self.failures.clear();
            }
            UserEvent::LoggedOut { .. } | UserEvent::RecoveryCodesRegenerated => {}
            UserEvent::TwoFactorEnabled => self.two_factor = true,
            UserEvent::TwoFactorDisabled | UserEvent::TwoFactorReset => self.two_factor = false,
            UserEvent::UserErased => {
                *self = User {
                    erased: true,
                    deactivated: true,
                    version: self.version,
                    ..User::default()
                };
            }
            UserEvent::Redacted => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type UserTest = TestFramework<User>;

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            email: Email::parse("ada@example.org").unwrap(),
            name: PersonName::parse("Ada Lovelace").unwrap(),
            password_hash: "$argon2id$test".into(),
            administrator: true,
            roles: BTreeSet::new(),
            must_change_password: false,
        }
    }

    fn register(email: &str, name: &str) -> UserCommand {
        UserCommand::Register {
            email: email.into(),
            name: name.into(),
            password_hash: "$argon2id$test".into(),
            administrator: true,
            roles: BTreeSet::new(),
            must_change_password: false,
        }
    }

    #[test]
    fn administration_commands_emit_only_real_changes() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::SetAdministrator {
                administrator: true,
            })
            .then_expect_events(vec![]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::SetAdministrator {
                administrator: false,
            })
            .then_expect_events(vec![UserEvent::AdministratorRevoked]);
        let roles: BTreeSet<Uuid> = [Uuid::nil()].into();
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Update {
                name: Some("Ada Lovelace".into()),
                email: Some("ada@lovelace.example".into()),
                roles: Some(roles.clone()),
            })
            .then_expect_events(vec![
                UserEvent::EmailChanged {
                    email: Email::parse("ada@lovelace.example").unwrap(),
                },
                UserEvent::RolesAssigned { roles },
            ]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Update {
                name: Some("Ada".into()),
                email: Some("bad".into()),
                roles: None,
            })
            .then_expect_error(UserError::InvalidField {
                field: "email".into(),
                reason: ValueError::InvalidEmail,
            });
    }

    #[test]
    fn deactivation_and_reactivation() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Deactivate)
            .then_expect_events(vec![UserEvent::UserDeactivated]);
        UserTest::with(())
            .given(vec![registered(), UserEvent::UserDeactivated])
            .when(UserCommand::Deactivate)
            .then_expect_error(UserError::AlreadyDeactivated);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Reactivate)
            .then_expect_error(UserError::AlreadyActive);
        UserTest::with(())
            .given(vec![registered(), UserEvent::UserDeactivated])
            .when(UserCommand::Reactivate)
            .then_expect_events(vec![UserEvent::UserReactivated]);
    }

    #[test]
    fn a_reset_password_must_be_changed() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::PasswordReset {
            password_hash: "h".into(),
        });
        assert!(user.must_change_password());
        user.apply(UserEvent::PasswordChanged {
            password_hash: "h2".into(),
        });
        assert!(!user.must_change_password());
    }

    #[test]
    fn management_of_a_missing_user_is_not_found() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Update {
                name: Some("X".into()),
                email: None,
                roles: None,
            })
            .then_expect_error(UserError::NotFound);
    }

    fn origin() -> LoginOrigin {
        LoginOrigin::new(Some("192.0.2.1".into()), Some("curl/8".into()))
    }

    #[test]
    fn register_parses_email_and_name() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register(" ada@example.org", "Ada Lovelace "))
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn register_rejects_a_malformed_email() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register("ada", "Ada"))
            .then_expect_error(UserError::InvalidField {
                field: "email".into(),
                reason: ValueError::InvalidEmail,
            });
    }

    #[test]
    fn register_rejects_an_empty_name() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register("ada@example.org", " "))
            .then_expect_error(UserError::InvalidField {
                field: "name".into(),
                reason: ValueError::Empty,
            });
    }

    #[test]
    fn register_twice_is_refused() {
        UserTest::with(())
            .given(vec![registered()])
            .when(register("ada@example.org", "Ada"))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn logins_and_logouts_are_recorded() {
        let session_id = Uuid::nil();
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordLoginSuccess {
                session_id,
                origin: origin(),
                at: t(0),
                verified_hash: Some("$argon2id$test".into()),
                second_factor: None,
            })
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id,
                origin: origin(),
                second_factor: None,
            }]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordLoginFailure {
                reason: LoginFailure::WrongPassword,
                origin: origin(),
                at: t(0),
            })
            .then_expect_events(vec![failed(0)]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordLogout { session_id })
            .then_expect_events(vec![UserEvent::LoggedOut { session_id }]);
    }

    #[test]
    fn logins_of_a_missing_user_are_refused() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::RecordLoginFailure {
                reason: LoginFailure::WrongPassword,
                origin: origin(),
                at: t(0),
            })
            .then_expect_error(UserError::NotFound);
    }

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::TimeDelta::minutes(minutes)
    }

    fn failed(minute: i64) -> UserEvent {
        UserEvent::LoginFailed {
            reason: LoginFailure::WrongPassword,
            origin: origin(),
            at: t(minute),
        }
    }

    fn fail_at(minute: i64) -> UserCommand {
        UserCommand::RecordLoginFailure {
            reason: LoginFailure::WrongPassword,
            origin: origin(),
            at: t(minute),
        }
    }

    #[test]
    fn the_tenth_failure_within_the_window_locks_the_account() {
        let mut given = vec![registered()];
        given.extend((0..9).map(failed));
        UserTest::with(())
            .given(given)
            .when(fail_at(9))
            .then_expect_events(vec![
                failed(9),
                UserEvent::LoginLocked {
                    until: t(9) + LOCK_DURATION,
                },
            ]);
    }

    #[test]
    fn failures_outside_the_window_or_before_a_success_do_not_count() {
        let mut spread = vec![registered()];
        spread.extend((0..9).map(|i| failed(i * 2)));
        UserTest::with(())
            .given(spread)
            .when(fail_at(20))
            .then_expect_events(vec![failed(20)]);
        let mut reset = vec![registered()];
        reset.extend((0..5).map(failed));
        reset.push(UserEvent::LoginSucceeded {
            session_id: Uuid::nil(),
            origin: origin(),
            second_factor: None,
        });
        reset.extend((5..9).map(failed));
        UserTest::with(())
            .given(reset)
            .when(fail_at(9))
            .then_expect_events(vec![failed(9)]);
    }

    fn succeed_at(minute: i64, hash: &str) -> UserCommand {
        UserCommand::RecordLoginSuccess {
            session_id: Uuid::nil(),
            origin: origin(),
            at: t(minute),
            verified_hash: Some(hash.into()),
            second_factor: None,
        }
    }

    #[test]
    fn the_aggregate_refuses_logins_its_own_state_forbids() {
        let locked = vec![registered(), UserEvent::LoginLocked { until: t(15) }];
        UserTest::with(())
            .given(locked.clone())
            .when(succeed_at(5, "$argon2id$test"))
            .then_expect_error(UserError::LoginRefused(LoginFailure::Locked));
        UserTest::with(())
            .given(locked)
            .when(succeed_at(15, "$argon2id$test"))
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id: Uuid::nil(),
                origin: origin(),
                second_factor: None,
            }]);
        UserTest::with(())
            .given(vec![registered(), UserEvent::UserDeactivated])
            .when(succeed_at(0, "$argon2id$test"))
            .then_expect_error(UserError::LoginRefused(LoginFailure::Deactivated));
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::PasswordReset {
                    password_hash: "$argon2id$new".into(),
                },
            ])
            .when(succeed_at(0, "$argon2id$test"))
            .then_expect_error(UserError::LoginRefused(LoginFailure::WrongPassword));
    }

    #[test]
    fn enrolled_users_log_in_only_with_a_second_factor() {
        let enrolled = vec![registered(), UserEvent::TwoFactorEnabled];
        UserTest::with(())
            .given(enrolled.clone())
            .when(succeed_at(0, "$argon2id$test"))
            .then_expect_error(UserError::LoginRefused(LoginFailure::WrongSecondFactor));
        UserTest::with(())
            .given(enrolled.clone())
            .when(UserCommand::RecordLoginSuccess {
                session_id: Uuid::nil(),
                origin: origin(),
                at: t(0),
                verified_hash: Some("$argon2id$test".into()),
                second_factor: Some(SecondFactor::RecoveryCode),
            })
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id: Uuid::nil(),
                origin: origin(),
                second_factor: Some(SecondFactor::RecoveryCode),
            }]);
        let mut given = enrolled.clone();
        given.extend((0..9).map(|m| UserEvent::LoginFailed {
            reason: LoginFailure::WrongSecondFactor,
            origin: origin(),
            at: t(m),
        }));
        let locks = UserTest::with(())
            .given(given)
            .when(UserCommand::RecordLoginFailure {
                reason: LoginFailure::WrongSecondFactor,
                origin: origin(),
                at: t(9),
            })
            .inspect_result()
            .unwrap();
        assert!(
            matches!(locks.last(), Some(UserEvent::LoginLocked { .. })),
            "wrong codes count toward the lock: {locks:?}"
        );
    }

    #[test]
    fn two_factor_is_enabled_once_and_removed_by_its_user_or_an_administrator() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::EnableTwoFactor)
            .then_expect_events(vec![UserEvent::TwoFactorEnabled]);
        let enrolled = vec![registered(), UserEvent::TwoFactorEnabled];
        UserTest::with(())
            .given(enrolled.clone())
            .when(UserCommand::EnableTwoFactor)
            .then_expect_error(UserError::TwoFactorAlreadyEnabled);
        UserTest::with(())
            .given(enrolled.clone())
            .when(UserCommand::ResetTwoFactor)
            .then_expect_events(vec![UserEvent::TwoFactorReset]);
        UserTest::with(())
            .given(enrolled)
            .when(UserCommand::DisableTwoFactor)
            .then_expect_events(vec![UserEvent::TwoFactorDisabled]);
        for command in [
            UserCommand::DisableTwoFactor,
            UserCommand::ResetTwoFactor,
            UserCommand::RegenerateRecoveryCodes,
        ] {
            UserTest::with(())
                .given(vec![
                    registered(),
                    UserEvent::TwoFactorEnabled,
                    UserEvent::TwoFactorReset,
                ])
                .when(command)
                .then_expect_error(UserError::TwoFactorNotEnabled);
        }
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::TwoFactorEnabled);
        assert!(user.has_two_factor());
        user.apply(UserEvent::TwoFactorReset);
        assert!(!user.has_two_factor());
    }

    #[test]
    fn refusals_of_a_restricted_organisation_never_lock() {
        let restricted = |m: i64| UserEvent::LoginFailed {
            reason: LoginFailure::OrganizationRestricted,
            origin: origin(),
            at: t(m),
        };
        let mut given = vec![registered()];
        given.extend((0..9).map(restricted));
        given.extend((0..9).map(failed));
        // Nine wrong passwords and as many refusals: the tenth refusal locks nothing, and the
        // tenth wrong password counts only the nine before it.
        UserTest::with(())
            .given(given.clone())
            .when(UserCommand::RecordLoginFailure {
                reason: LoginFailure::OrganizationRestricted,
                origin: origin(),
                at: t(9),
            })
            .then_expect_events(vec![restricted(9)]);
        let mut user = User::default();
        for event in given {
            user.apply(event);
        }
        assert_eq!(user.failures.len(), 9);
    }

    #[test]
    fn attempts_during_a_lock_do_not_count_toward_the_next() {
        let mut given = vec![registered(), UserEvent::LoginLocked { until: t(15) }];
        given.extend((1..14).map(|m| UserEvent::LoginFailed {
            reason: LoginFailure::Locked,
            origin: origin(),
            at: t(m),
        }));
        UserTest::with(())
            .given(given)
            .when(fail_at(16))
            .then_expect_events(vec![failed(16)]);
    }

    #[test]
    fn a_lock_expires_and_can_be_lifted() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::LoginLocked { until: t(15) });
        assert!(user.is_locked_at(t(14)));
        assert!(!user.is_locked_at(t(15)));
        UserTest::with(())
            .given(vec![registered(), UserEvent::LoginLocked { until: t(15) }])
            .when(UserCommand::Unlock)
            .then_expect_events(vec![UserEvent::LoginUnlocked]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Unlock)
            .then_expect_events(vec![]);
    }

    #[test]
    fn long_user_agents_are_cut() {
        let origin = LoginOrigin::new(None, Some("é".repeat(MAX_USER_AGENT + 10)));
        assert_eq!(
            origin.user_agent.map(|ua| ua.chars().count()),
            Some(MAX_USER_AGENT)
        );
    }
}
