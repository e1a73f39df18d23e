//! The write model of Custos: aggregates, commands, events, value objects. Pure: no I/O.

pub mod datasheet;
pub mod metadata;
pub mod record;
pub mod user;
pub mod values;

pub use datasheet::{Datasheet, FieldKind, FieldSpec};
pub use metadata::EventMetadata;
pub use record::{Record, RecordCommand, RecordError, RecordEvent};
pub use user::{LoginFailure, LoginOrigin, User, UserCommand, UserError, UserEvent};
pub use values::{Email, PersonName, Phone, ValueError};
