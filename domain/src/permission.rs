//! Permissions: what a role lets its users do with each datasheet.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::datasheet::Datasheet;

/// One thing a user may do with the records of a datasheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    Read,
    Create,
    Update,
    Archive,
    Erase,
    Export,
    History,
    Report,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::Read,
        Permission::Create,
        Permission::Update,
        Permission::Archive,
        Permission::Erase,
        Permission::Export,
        Permission::History,
        Permission::Report,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Create => "create",
            Permission::Update => "update",
            Permission::Archive => "archive",
            Permission::Erase => "erase",
            Permission::Export => "export",
            Permission::History => "history",
            Permission::Report => "report",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == raw)
    }
}

/// A permission on one datasheet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub datasheet: Datasheet,
    pub permission: Permission,
}

impl Grant {
    pub fn new(datasheet: Datasheet, permission: Permission) -> Self {
        Self {
            datasheet,
            permission,
        }
    }
}

/// A set of grants: a role's, or the union of a user's roles.
pub type Grants = BTreeSet<Grant>;

/// Every permission on every datasheet: what an administrator holds.
pub fn all_grants() -> Grants {
    Datasheet::ALL
        .into_iter()
        .flat_map(|d| Permission::ALL.into_iter().map(move |p| Grant::new(d, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip_through_their_names() {
        for permission in Permission::ALL {
            assert_eq!(Permission::parse(permission.as_str()), Some(permission));
        }
        assert_eq!(Permission::parse("delete"), None);
        assert_eq!(all_grants().len(), Datasheet::ALL.len() * 8);
    }
}
