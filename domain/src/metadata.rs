//! Event metadata: who caused an event and as part of which request and command. Stored in
//! clear beside each event, so it holds ids only, never personal data.

use std::collections::HashMap;

use uuid::Uuid;

const ACTOR: &str = "actor_id";
const ACTOR_KIND: &str = "actor_kind";
const REQUEST: &str = "request_id";
const COMMAND: &str = "command_id";

/// Who a command ran as: a user, an integration through an API token, a retention policy
/// that the service's scheduler applied, or Custos disabling a webhook whose deliveries kept
/// failing (the webhook's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    User(Uuid),
    ApiToken(Uuid),
    RetentionPolicy(Uuid),
    Webhook(Uuid),
}

impl Actor {
    pub fn id(self) -> Uuid {
        match self {
            Actor::User(id)
            | Actor::ApiToken(id)
            | Actor::RetentionPolicy(id)
            | Actor::Webhook(id) => id,
        }
    }

    /// An actor from its stored kind and id; `None` for an unknown kind.
    pub fn from_parts(kind: &str, id: Uuid) -> Option<Self> {
        match kind {
            "user" => Some(Actor::User(id)),
            "api_token" => Some(Actor::ApiToken(id)),
            "retention_policy" => Some(Actor::RetentionPolicy(id)),
            "webhook" => Some(Actor::Webhook(id)),
            _ => None,
        }
    }

    /// `user`, `api_token`, `retention_policy` or `webhook`, as stored.
    pub fn kind(self) -> &'static str {
        match self {
            Actor::User(_) => "user",
            Actor::ApiToken(_) => "api_token",
            Actor::RetentionPolicy(_) => "retention_policy",
            Actor::Webhook(_) => "webhook",
        }
    }
}

/// The metadata every event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMetadata {
    /// On whose behalf the command ran.
    pub actor: Actor,
    /// The HTTP request (or CLI invocation) that issued the command.
    pub request_id: Uuid,
    /// The command itself; all events of one command share it.
    pub command_id: Uuid,
}

impl EventMetadata {
    /// Metadata for a new command by `actor` within `request_id`.
    pub fn new(actor: Actor, request_id: Uuid) -> Self {
        Self {
            actor,
            request_id,
            command_id: Uuid::now_v7(),
        }
    }

    /// The form cqrs-es stores.
    pub fn to_map(self) -> HashMap<String, String> {
        HashMap::from([
            (ACTOR.to_owned(), self.actor.id().to_string()),
            (ACTOR_KIND.to_owned(), self.actor.kind().to_owned()),
            (REQUEST.to_owned(), self.request_id.to_string()),
            (COMMAND.to_owned(), self.command_id.to_string()),
        ])
    }

    /// Reads stored metadata; `None` when a required id is missing or malformed.
    pub fn from_map(map: &HashMap<String, String>) -> Option<Self> {
        let id = |key: &str| map.get(key).and_then(|v| Uuid::parse_str(v).ok());
        let actor_id = id(ACTOR)?;
        let actor = Actor::from_parts(map.get(ACTOR_KIND)?, actor_id)?;
        Some(Self {
            actor,
            request_id: id(REQUEST)?,
            command_id: id(COMMAND)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_through_the_stored_form() {
        for actor in [
            Actor::User(Uuid::now_v7()),
            Actor::ApiToken(Uuid::now_v7()),
            Actor::RetentionPolicy(Uuid::now_v7()),
        ] {
            let meta = EventMetadata::new(actor, Uuid::now_v7());
            assert_eq!(EventMetadata::from_map(&meta.to_map()), Some(meta));
        }
        assert_eq!(EventMetadata::from_map(&HashMap::new()), None);
        let mut unknown_kind =
            EventMetadata::new(Actor::User(Uuid::now_v7()), Uuid::now_v7()).to_map();
        unknown_kind.insert(ACTOR_KIND.to_owned(), "robot".to_owned());
        assert_eq!(EventMetadata::from_map(&unknown_kind), None);
    }
}
