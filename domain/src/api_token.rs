//! The `ApiToken` aggregate: a credential an administrator creates for an integration. It acts
//! with the permissions of one role, never as an administrator, until it expires or is
//! revoked. Its stream is also its use history, recorded like a user's logins.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::user::LoginOrigin;
use crate::values::{bounded_text, ValueError};

/// The longest token name.
pub const MAX_TOKEN_NAME: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    name: Option<String>,
    role: Option<Uuid>,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    version: u64,
}

/// Why a presented token was refused although it is one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRefusal {
    Revoked,
    Expired,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApiTokenCommand {
    /// Creates the token. Only a hash of its secret arrives here; the service checks first
    /// that the role exists.
    Create {
        name: String,
        role: Uuid,
        expires_at: Option<DateTime<Utc>>,
        /// Hex SHA-256 of the whole bearer token.
        token_hash: String,
        at: DateTime<Utc>,
    },
    Revoke,
    /// The token authenticated a request at `at`; refused when it is revoked or expired.
    RecordUse {
        origin: LoginOrigin,
        at: DateTime<Utc>,
    },
    /// A revoked or expired token was presented.
    RecordRefusal {
        reason: TokenRefusal,
        origin: LoginOrigin,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiTokenEvent {
    ApiTokenCreated {
        name: String,
        role: Uuid,
        expires_at: Option<DateTime<Utc>>,
        token_hash: String,
    },
    ApiTokenRevoked,
    ApiTokenUsed {
        origin: LoginOrigin,
    },
    ApiTokenRefused {
        reason: TokenRefusal,
        origin: LoginOrigin,
    },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiTokenError {
    #[error("the token already exists")]
    AlreadyExists,
    #[error("no such API token")]
    NotFound,
    #[error("the token is already revoked")]
    AlreadyRevoked,
    #[error("the token was refused")]
    Refused(TokenRefusal),
    #[error("field `name` {0}")]
    InvalidName(ValueError),
    #[error("the expiry must be in the future")]
    ExpiryInPast,
}

impl DomainEvent for ApiTokenEvent {
    fn event_type(&self) -> String {
        match self {
            ApiTokenEvent::ApiTokenCreated { .. } => "ApiTokenCreated",
            ApiTokenEvent::ApiTokenRevoked => "ApiTokenRevoked",
            ApiTokenEvent::ApiTokenUsed { .. } => "ApiTokenUsed",
            ApiTokenEvent::ApiTokenRefused { .. } => "ApiTokenRefused",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl ApiToken {
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    pub fn role(&self) -> Option<Uuid> {
        self.role
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked
    }

    /// Why the token may not be used at `at`, if it may not.
    pub fn refusal_at(&self, at: DateTime<Utc>) -> Option<TokenRefusal> {
        if self.revoked {
            Some(TokenRefusal::Revoked)
        } else if self.expires_at.is_some_and(|expiry| expiry <= at) {
            Some(TokenRefusal::Expired)
        } else {
            None
        }
    }

    fn existing(&self) -> Result<(), ApiTokenError> {
        self.name
            .as_ref()
            .map(|_| ())
            .ok_or(ApiTokenError::NotFound)
    }
}

impl Aggregate for ApiToken {
    const TYPE: &'static str = "api_token";
    type Command = ApiTokenCommand;
    type Event = ApiTokenEvent;
    type Error = ApiTokenError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ApiTokenCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ApiTokenError> {
        let event = match command {
            ApiTokenCommand::Create {
                name,
                role,
                expires_at,
                token_hash,
                at,
            } => {
                if self.name.is_some() {
                    return Err(ApiTokenError::AlreadyExists);
                }
                let name =
                    bounded_text(&name, MAX_TOKEN_NAME).map_err(ApiTokenError::InvalidName)?;
                if expires_at.is_some_and(|expiry| expiry <= at) {
                    return Err(ApiTokenError::ExpiryInPast);
                }
                ApiTokenEvent::ApiTokenCreated {
                    name,
                    role,
                    expires_at,
                    token_hash,
                }
            }
            ApiTokenCommand::Revoke => {
                self.existing()?;
                if self.revoked {
                    return Err(ApiTokenError::AlreadyRevoked);
                }
                ApiTokenEvent::ApiTokenRevoked
            }
            ApiTokenCommand::RecordUse { origin, at } => {
                self.existing()?;
                if let Some(refusal) = self.refusal_at(at) {
                    return Err(ApiTokenError::Refused(refusal));
                }
                ApiTokenEvent::ApiTokenUsed { origin }
            }
            ApiTokenCommand::RecordRefusal { reason, origin } => {
                self.existing()?;
                ApiTokenEvent::ApiTokenRefused { reason, origin }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: ApiTokenEvent) {
        self.version += 1;
        match event {
            ApiTokenEvent::ApiTokenCreated {
                name,
                role,
                expires_at,
                ..
            } => {
                self.name = Some(name);
                self.role = Some(role);
                self.expires_at = expires_at;
            }
            ApiTokenEvent::ApiTokenRevoked => self.revoked = true,
            ApiTokenEvent::ApiTokenUsed { .. } | ApiTokenEvent::ApiTokenRefused { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type TokenTest = TestFramework<ApiToken>;

    fn t(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::TimeDelta::minutes(minutes)
    }

    fn created(expires_at: Option<DateTime<Utc>>) -> ApiTokenEvent {
        ApiTokenEvent::ApiTokenCreated {
            name: "Payroll sync".into(),
            role: Uuid::nil(),
            expires_at,
            token_hash: "ab".into(),
        }
    }

    fn create(name: &str, expires_at: Option<DateTime<Utc>>) -> ApiTokenCommand {
        ApiTokenCommand::Create {
            name: name.into(),
            role: Uuid::nil(),
            expires_at,
            token_hash: "ab".into(),
            at: t(0),
        }
    }

    fn use_at(minute: i64) -> ApiTokenCommand {
        ApiTokenCommand::RecordUse {
            origin: LoginOrigin::default(),
            at: t(minute),
        }
    }

    #[test]
    fn tokens_are_created_with_a_name_and_a_future_expiry() {
        TokenTest::with(())
            .given_no_previous_events()
            .when(create("  Payroll sync ", Some(t(60))))
            .then_expect_events(vec![created(Some(t(60)))]);
        TokenTest::with(())
            .given_no_previous_events()
            .when(create("Payroll sync", Some(t(0))))
            .then_expect_error(ApiTokenError::ExpiryInPast);
        TokenTest::with(())
            .given_no_previous_events()
            .when(create(" ", None))
            .then_expect_error(ApiTokenError::InvalidName(ValueError::Empty));
        TokenTest::with(())
            .given(vec![created(None)])
            .when(create("Payroll sync", None))
            .then_expect_error(ApiTokenError::AlreadyExists);
    }

    #[test]
    fn revoked_or_expired_tokens_cannot_be_used() {
        TokenTest::with(())
            .given(vec![created(Some(t(60)))])
            .when(use_at(59))
            .then_expect_events(vec![ApiTokenEvent::ApiTokenUsed {
                origin: LoginOrigin::default(),
            }]);
        TokenTest::with(())
            .given(vec![created(Some(t(60)))])
            .when(use_at(60))
            .then_expect_error(ApiTokenError::Refused(TokenRefusal::Expired));
        TokenTest::with(())
            .given(vec![created(None), ApiTokenEvent::ApiTokenRevoked])
            .when(use_at(1))
            .then_expect_error(ApiTokenError::Refused(TokenRefusal::Revoked));
        TokenTest::with(())
            .given(vec![created(None), ApiTokenEvent::ApiTokenRevoked])
            .when(ApiTokenCommand::Revoke)
            .then_expect_error(ApiTokenError::AlreadyRevoked);
        TokenTest::with(())
            .given_no_previous_events()
            .when(ApiTokenCommand::Revoke)
            .then_expect_error(ApiTokenError::NotFound);
    }
}
