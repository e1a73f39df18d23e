//! The `Organization` aggregate: the tenant-wide settings administrators change, as history.
//! One stream per tenant, whose id is the tenant's id. Name, slug and region live in the
//! catalog; what is here is policy.

use std::convert::Infallible;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    two_factor_required: bool,
    version: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrganizationCommand {
    /// Whether every user must log in with a second factor. Users not yet enrolled can only
    /// enrol (and log out) until they have.
    RequireTwoFactor { required: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrganizationEvent {
    TwoFactorRequired,
    TwoFactorMadeOptional,
}

impl DomainEvent for OrganizationEvent {
    fn event_type(&self) -> String {
        match self {
            OrganizationEvent::TwoFactorRequired => "TwoFactorRequired",
            OrganizationEvent::TwoFactorMadeOptional => "TwoFactorMadeOptional",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Organization {
    pub fn two_factor_required(&self) -> bool {
        self.two_factor_required
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = "organization";
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    /// Every setting may be set at any time; setting it to what it is records nothing.
    type Error = Infallible;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrganizationCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Infallible> {
        match command {
            OrganizationCommand::RequireTwoFactor { required } => {
                if required != self.two_factor_required {
                    let event = if required {
                        OrganizationEvent::TwoFactorRequired
                    } else {
                        OrganizationEvent::TwoFactorMadeOptional
                    };
                    sink.write(event, self).await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: OrganizationEvent) {
        self.version += 1;
        match event {
            OrganizationEvent::TwoFactorRequired => self.two_factor_required = true,
            OrganizationEvent::TwoFactorMadeOptional => self.two_factor_required = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[test]
    fn the_two_factor_requirement_records_only_changes() {
        TestFramework::<Organization>::with(())
            .given_no_previous_events()
            .when(OrganizationCommand::RequireTwoFactor { required: true })
            .then_expect_events(vec![OrganizationEvent::TwoFactorRequired]);
        TestFramework::<Organization>::with(())
            .given(vec![OrganizationEvent::TwoFactorRequired])
            .when(OrganizationCommand::RequireTwoFactor { required: true })
            .then_expect_events(vec![]);
        TestFramework::<Organization>::with(())
            .given(vec![OrganizationEvent::TwoFactorRequired])
            .when(OrganizationCommand::RequireTwoFactor { required: false })
            .then_expect_events(vec![OrganizationEvent::TwoFactorMadeOptional]);
    }
}
