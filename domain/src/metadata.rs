//! Event metadata: who caused an event and as part of which request and command. Stored in
//! clear beside each event, so it holds ids only, never personal data.

use std::collections::HashMap;

use uuid::Uuid;

const ACTOR: &str = "actor_user_id";
const REQUEST: &str = "request_id";
const COMMAND: &str = "command_id";

/// The metadata every event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMetadata {
    /// The user on whose behalf the command ran.
    pub actor_user_id: Uuid,
    /// The HTTP request (or CLI invocation) that issued the command.
    pub request_id: Uuid,
    /// The command itself; all events of one command share it.
    pub command_id: Uuid,
}

impl EventMetadata {
    /// Metadata for a new command by `actor_user_id` within `request_id`.
    pub fn new(actor_user_id: Uuid, request_id: Uuid) -> Self {
        Self {
            actor_user_id,
            request_id,
            command_id: Uuid::now_v7(),
        }
    }

    /// The form cqrs-es stores.
    pub fn to_map(self) -> HashMap<String, String> {
        HashMap::from([
            (ACTOR.to_owned(), self.actor_user_id.to_string()),
            (REQUEST.to_owned(), self.request_id.to_string()),
            (COMMAND.to_owned(), self.command_id.to_string()),
        ])
    }

    /// Reads stored metadata; `None` when a required id is missing or malformed.
    pub fn from_map(map: &HashMap<String, String>) -> Option<Self> {
        let id = |key: &str| map.get(key).and_then(|v| Uuid::parse_str(v).ok());
        Some(Self {
            actor_user_id: id(ACTOR)?,
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
        let meta = EventMetadata::new(Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(EventMetadata::from_map(&meta.to_map()), Some(meta));
        assert_eq!(EventMetadata::from_map(&HashMap::new()), None);
    }
}
