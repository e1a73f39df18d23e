//! The `Role` aggregate: a named set of per-datasheet permissions that administrators define
//! and assign to users.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::permission::{Grant, Grants};
use crate::values::{bounded_text, ValueError};

/// A role's name: trimmed, 1 to 100 characters, unique in the tenant (case-insensitively; the
/// service checks uniqueness).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoleName(String);

impl RoleName {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        bounded_text(raw, 100).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What uniqueness compares.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

impl TryFrom<String> for RoleName {
    type Error = ValueError;
    fn try_from(value: String) -> Result<Self, ValueError> {
        Self::parse(&value)
    }
}

impl From<RoleName> for String {
    fn from(value: RoleName) -> Self {
        value.0
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    name: Option<RoleName>,
    grants: Grants,
    deleted: bool,
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoleCommand {
    Create {
        name: String,
        grants: Grants,
    },
    Rename {
        name: String,
    },
    Grant {
        grant: Grant,
    },
    Revoke {
        grant: Grant,
    },
    /// The service checks first that no user holds the role (or reassigns them).
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RoleEvent {
    RoleCreated { name: RoleName, grants: Grants },
    RoleRenamed { name: RoleName },
    PermissionGranted { grant: Grant },
    PermissionRevoked { grant: Grant },
    RoleDeleted,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoleError {
    #[error("the role already exists")]
    AlreadyExists,
    #[error("no such role")]
    NotFound,
    #[error("field `name` {0}")]
    InvalidName(ValueError),
}

impl DomainEvent for RoleEvent {
    fn event_type(&self) -> String {
        match self {
            RoleEvent::RoleCreated { .. } => "RoleCreated",
            RoleEvent::RoleRenamed { .. } => "RoleRenamed",
            RoleEvent::PermissionGranted { .. } => "PermissionGranted",
            RoleEvent::PermissionRevoked { .. } => "PermissionRevoked",
            RoleEvent::RoleDeleted => "RoleDeleted",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Role {
    pub fn name(&self) -> Option<&RoleName> {
        self.name.as_ref()
    }

    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    fn existing(&self) -> Result<(), RoleError> {
        match (&self.name, self.deleted) {
            (Some(_), false) => Ok(()),
            _ => Err(RoleError::NotFound),
        }
    }
}

impl Aggregate for Role {
    const TYPE: &'static str = "role";
    type Command = RoleCommand;
    type Event = RoleEvent;
    type Error = RoleError;
    type Services = ();

    async fn handle(
        &mut self,
        command: RoleCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), RoleError> {
        let event = match command {
            RoleCommand::Create { name, grants } => {
                if self.name.is_some() {
                    return Err(RoleError::AlreadyExists);
                }
                let name = RoleName::parse(&name).map_err(RoleError::InvalidName)?;
                RoleEvent::RoleCreated { name, grants }
            }
            RoleCommand::Rename { name } => {
                self.existing()?;
                let name = RoleName::parse(&name).map_err(RoleError::InvalidName)?;
                if Some(&name) == self.name.as_ref() {
                    return Ok(());
                }
                RoleEvent::RoleRenamed { name }
            }
            RoleCommand::Grant { grant } => {
                self.existing()?;
                if self.grants.contains(&grant) {
                    return Ok(());
                }
                RoleEvent::PermissionGranted { grant }
            }
            RoleCommand::Revoke { grant } => {
                self.existing()?;
                if !self.grants.contains(&grant) {
                    return Ok(());
                }
                RoleEvent::PermissionRevoked { grant }
            }
            RoleCommand::Delete => {
                self.existing()?;
                RoleEvent::RoleDeleted
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: RoleEvent) {
        self.version += 1;
        match event {
            RoleEvent::RoleCreated { name, grants } => {
                self.name = Some(name);
                self.grants = grants;
            }
            RoleEvent::RoleRenamed { name } => self.name = Some(name),
            RoleEvent::PermissionGranted { grant } => {
                self.grants.insert(grant);
            }
            RoleEvent::PermissionRevoked { grant } => {
                self.grants.remove(&grant);
            }
            RoleEvent::RoleDeleted => self.deleted = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::permission::Permission;
    use crate::Datasheet;
    use cqrs_es::test::TestFramework;

    type RoleTest = TestFramework<Role>;

    fn read() -> Grant {
        Grant::new(Datasheet::Employees, Permission::Read)
    }

    fn created() -> RoleEvent {
        RoleEvent::RoleCreated {
            name: RoleName::parse("Viewer").unwrap(),
            grants: [read()].into(),
        }
    }

    #[test]
    fn create_parses_the_name() {
        RoleTest::with(())
            .given_no_previous_events()
            .when(RoleCommand::Create {
                name: " Viewer ".into(),
                grants: [read()].into(),
            })
            .then_expect_events(vec![created()]);
        RoleTest::with(())
            .given_no_previous_events()
            .when(RoleCommand::Create {
                name: "  ".into(),
                grants: Grants::new(),
            })
            .then_expect_error(RoleError::InvalidName(ValueError::Empty));
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Create {
                name: "Other".into(),
                grants: Grants::new(),
            })
            .then_expect_error(RoleError::AlreadyExists);
    }

    #[test]
    fn grants_and_revokes_are_idempotent() {
        let export = Grant::new(Datasheet::Employees, Permission::Export);
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Grant { grant: export })
            .then_expect_events(vec![RoleEvent::PermissionGranted { grant: export }]);
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Grant { grant: read() })
            .then_expect_events(vec![]);
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Revoke { grant: read() })
            .then_expect_events(vec![RoleEvent::PermissionRevoked { grant: read() }]);
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Revoke { grant: export })
            .then_expect_events(vec![]);
    }

    #[test]
    fn rename_and_delete() {
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Rename {
                name: "Reader".into(),
            })
            .then_expect_events(vec![RoleEvent::RoleRenamed {
                name: RoleName::parse("Reader").unwrap(),
            }]);
        RoleTest::with(())
            .given(vec![created()])
            .when(RoleCommand::Delete)
            .then_expect_events(vec![RoleEvent::RoleDeleted]);
    }

    #[test]
    fn a_deleted_or_missing_role_is_not_found() {
        for given in [vec![], vec![created(), RoleEvent::RoleDeleted]] {
            RoleTest::with(())
                .given(given)
                .when(RoleCommand::Grant { grant: read() })
                .then_expect_error(RoleError::NotFound);
        }
    }
}
