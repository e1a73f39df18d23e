//! The `User` aggregate: a person who logs in to a tenant. Its stream is also the user's login
//! history: every success, failure and logout is an event on it.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::values::{Email, PersonName, ValueError};

/// The longest user agent kept in a login event; longer ones are cut (on a char boundary).
pub const MAX_USER_AGENT: usize = 512;

/// The state of one user, rebuilt from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    email: Option<Email>,
    name: Option<PersonName>,
    administrator: bool,
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
    },
    RecordLoginSuccess {
        session_id: Uuid,
        origin: LoginOrigin,
    },
    RecordLoginFailure {
        reason: LoginFailure,
        origin: LoginOrigin,
    },
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
    },
    LoginSucceeded {
        session_id: Uuid,
        origin: LoginOrigin,
    },
    LoginFailed {
        reason: LoginFailure,
        origin: LoginOrigin,
    },
    LoggedOut {
        session_id: Uuid,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("the user already exists")]
    AlreadyRegistered,
    #[error("no such user")]
    NotFound,
    #[error("field `{field}` {reason}")]
    InvalidField { field: String, reason: ValueError },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserRegistered { .. } => "UserRegistered",
            UserEvent::LoginSucceeded { .. } => "LoginSucceeded",
            UserEvent::LoginFailed { .. } => "LoginFailed",
            UserEvent::LoggedOut { .. } => "LoggedOut",
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

    fn existing(&self) -> Result<(), UserError> {
        self.email.as_ref().map(|_| ()).ok_or(UserError::NotFound)
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
            } => {
                if self.email.is_some() {
                    return Err(UserError::AlreadyRegistered);
                }
                UserEvent::UserRegistered {
                    email: Email::parse(&email).map_err(invalid("email"))?,
                    name: PersonName::parse(&name).map_err(invalid("name"))?,
                    password_hash,
                    administrator,
                }
            }
            UserCommand::RecordLoginSuccess { session_id, origin } => {
                self.existing()?;
                UserEvent::LoginSucceeded { session_id, origin }
            }
            UserCommand::RecordLoginFailure { reason, origin } => {
                self.existing()?;
                UserEvent::LoginFailed { reason, origin }
            }
            UserCommand::RecordLogout { session_id } => {
                self.existing()?;
                UserEvent::LoggedOut { session_id }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        self.version += 1;
        if let UserEvent::UserRegistered {
            email,
            name,
            administrator,
            ..
        } = event
        {
            self.email = Some(email);
            self.name = Some(name);
            self.administrator = administrator;
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
        }
    }

    fn register(email: &str, name: &str) -> UserCommand {
        UserCommand::Register {
            email: email.into(),
            name: name.into(),
            password_hash: "$argon2id$test".into(),
            administrator: true,
        }
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
            })
            .then_expect_events(vec![UserEvent::LoginSucceeded {
                session_id,
                origin: origin(),
            }]);
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::RecordLoginFailure {
                reason: LoginFailure::WrongPassword,
                origin: origin(),
            })
            .then_expect_events(vec![UserEvent::LoginFailed {
                reason: LoginFailure::WrongPassword,
                origin: origin(),
            }]);
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
            })
            .then_expect_error(UserError::NotFound);
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
