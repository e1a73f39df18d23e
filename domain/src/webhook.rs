//! The `Webhook` aggregate: an endpoint an organisation's administrators register to be told,
//! by a signed HTTP POST, when something they chose happens (a record created, changed,
//! archived, erased or restricted; a user or role changed; the organisation's subscription
//! changed). One stream per webhook: who registered, changed, disabled or removed it is
//! history like any other change. Custos itself disables a webhook whose deliveries keep
//! failing (actor `custos`).
//!
//! What a delivery carries is the service's concern; the aggregate keeps the endpoint and the
//! topics. Whether the URL points at the service itself needs the service's address and is
//! checked there.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::values::{bounded_text, ValueError};

/// The longest URL accepted, in bytes.
pub const MAX_URL: usize = 2_048;
/// The longest description.
pub const MAX_DESCRIPTION: usize = 200;

/// What a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookTopic {
    RecordCreated,
    RecordUpdated,
    RecordArchived,
    RecordErased,
    RecordRestricted,
    UserChanged,
    RoleChanged,
    LifecycleChanged,
}

impl WebhookTopic {
    pub const ALL: [WebhookTopic; 8] = [
        WebhookTopic::RecordCreated,
        WebhookTopic::RecordUpdated,
        WebhookTopic::RecordArchived,
        WebhookTopic::RecordErased,
        WebhookTopic::RecordRestricted,
        WebhookTopic::UserChanged,
        WebhookTopic::RoleChanged,
        WebhookTopic::LifecycleChanged,
    ];

    /// The name deliveries carry as their `type` (`record.created`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookTopic::RecordCreated => "record.created",
            WebhookTopic::RecordUpdated => "record.updated",
            WebhookTopic::RecordArchived => "record.archived",
            WebhookTopic::RecordErased => "record.erased",
            WebhookTopic::RecordRestricted => "record.restricted",
            WebhookTopic::UserChanged => "user.changed",
            WebhookTopic::RoleChanged => "role.changed",
            WebhookTopic::LifecycleChanged => "organization.lifecycle_changed",
        }
    }
}

/// A webhook's endpoint: an absolute `http` or `https` URL with a host, at most
/// [`MAX_URL`] bytes, without credentials in it (they would be shown wherever the URL is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(raw: &str) -> Result<Self, WebhookError> {
        let invalid = |reason: &'static str| WebhookError::InvalidUrl(reason);
        if raw.len() > MAX_URL {
            return Err(invalid("is longer than 2048 bytes"));
        }
        let url = url::Url::parse(raw.trim()).map_err(|_| invalid("is not an absolute URL"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("must use http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("must not hold a user name or password"));
        }
        if url.fragment().is_some() {
            return Err(invalid("must not have a fragment"));
        }
        Ok(Self(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host and port the URL names (the scheme's default port when it names none).
    pub fn host_and_port(&self) -> Option<(String, u16)> {
        let url = url::Url::parse(&self.0).ok()?;
        Some((url.host_str()?.to_owned(), url.port_or_known_default()?))
    }
}

impl TryFrom<String> for WebhookUrl {
    type Error = WebhookError;
    fn try_from(raw: String) -> Result<Self, WebhookError> {
        Self::parse(&raw)
    }
}

impl From<WebhookUrl> for String {
    fn from(url: WebhookUrl) -> String {
        url.0
    }
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    registered: bool,
    removed: bool,
    enabled: bool,
    url: Option<WebhookUrl>,
    topics: Vec<WebhookTopic>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    Register {
        url: String,
        topics: Vec<WebhookTopic>,
        description: Option<String>,
    },
    /// A new endpoint or new topics (what is left out stays).
    Change {
        url: Option<String>,
        topics: Option<Vec<WebhookTopic>>,
    },
    /// Stops deliveries: by an administrator, or by Custos after repeated failures.
    Disable {
        reason: String,
    },
    Enable,
    Remove,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WebhookEvent {
    WebhookRegistered {
        url: WebhookUrl,
        topics: Vec<WebhookTopic>,
        description: Option<String>,
    },
    WebhookChanged {
        url: WebhookUrl,
        topics: Vec<WebhookTopic>,
    },
    WebhookDisabled {
        reason: String,
    },
    WebhookEnabled,
    WebhookRemoved,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook is registered already")]
    AlreadyExists,
    #[error("no such webhook")]
    NotFound,
    #[error("the webhook was removed")]
    Removed,
    #[error("`url` {0}")]
    InvalidUrl(&'static str),
    #[error("name at least one event type in `events`")]
    NoTopics,
    #[error("`{field}` {reason}")]
    Invalid {
        field: &'static str,
        reason: ValueError,
    },
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> String {
        match self {
            WebhookEvent::WebhookRegistered { .. } => "WebhookRegistered",
            WebhookEvent::WebhookChanged { .. } => "WebhookChanged",
            WebhookEvent::WebhookDisabled { .. } => "WebhookDisabled",
            WebhookEvent::WebhookEnabled => "WebhookEnabled",
            WebhookEvent::WebhookRemoved => "WebhookRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Topics without repeats, in a stable order; at least one.
fn topics(mut topics: Vec<WebhookTopic>) -> Result<Vec<WebhookTopic>, WebhookError> {
    topics.sort();
    topics.dedup();
    if topics.is_empty() {
        return Err(WebhookError::NoTopics);
    }
    Ok(topics)
}

impl Webhook {
    pub fn is_enabled(&self) -> bool {
        self.registered && !self.removed && self.enabled
    }

    pub fn topics(&self) -> &[WebhookTopic] {
        &self.topics
    }

    /// Where deliveries go (`None` before registration).
    pub fn url(&self) -> Option<&WebhookUrl> {
        self.url.as_ref()
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    fn existing(&self) -> Result<(), WebhookError> {
        match (self.registered, self.removed) {
            (false, _) => Err(WebhookError::NotFound),
            (true, true) => Err(WebhookError::Removed),
            (true, false) => Ok(()),
        }
    }
}

impl Aggregate for Webhook {
    const TYPE: &'static str = "webhook";
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = WebhookError;
    type Services = ();

    async fn handle(
        &mut self,
        command: WebhookCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), WebhookError> {
        let event = match command {
            WebhookCommand::Register {
                url,
                topics: chosen,
                description,
            } => {
                if self.registered {
                    return Err(WebhookError::AlreadyExists);
                }
                let description = description
                    .filter(|d| !d.trim().is_empty())
                    .map(|d| bounded_text(&d, MAX_DESCRIPTION))
                    .transpose()
                    .map_err(|reason| WebhookError::Invalid {
                        field: "description",
                        reason,
                    })?;
                WebhookEvent::WebhookRegistered {
                    url: WebhookUrl::parse(&url)?,
                    topics: topics(chosen)?,
                    description,
                }
            }
            WebhookCommand::Change {
                url,
                topics: chosen,
            } => {
                self.existing()?;
                let url = match url {
                    Some(url) => WebhookUrl::parse(&url)?,
                    None => self.url.clone().ok_or(WebhookError::NotFound)?,
                };
                let chosen = match chosen {
                    Some(chosen) => topics(chosen)?,
                    None => self.topics.clone(),
                };
                if Some(&url) == self.url.as_ref() && chosen == self.topics {
                    return Ok(());
                }
                WebhookEvent::WebhookChanged {
                    url,
                    topics: chosen,
                }
            }
            WebhookCommand::Disable { reason } => {
                self.existing()?;
                if !self.enabled {
                    return Ok(());
                }
                WebhookEvent::WebhookDisabled {
                    reason: reason.chars().take(500).collect(),
                }
            }
            WebhookCommand::Enable => {
                self.existing()?;
                if self.enabled {
                    return Ok(());
                }
                WebhookEvent::WebhookEnabled
            }
            WebhookCommand::Remove => {
                self.existing()?;
                WebhookEvent::WebhookRemoved
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: WebhookEvent) {
        match event {
            WebhookEvent::WebhookRegistered { url, topics, .. } => {
                self.registered = true;
                self.enabled = true;
                self.url = Some(url);
                self.topics = topics;
            }
            WebhookEvent::WebhookChanged { url, topics } => {
                self.url = Some(url);
                self.topics = topics;
            }
            WebhookEvent::WebhookDisabled { .. } => self.enabled = false,
            WebhookEvent::WebhookEnabled => self.enabled = true,
            WebhookEvent::WebhookRemoved => {
                self.removed = true;
                self.enabled = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type WebhookTest = TestFramework<Webhook>;

    fn register(url: &str) -> WebhookCommand {
        WebhookCommand::Register {
            url: url.to_owned(),
            topics: vec![WebhookTopic::RecordUpdated, WebhookTopic::RecordCreated],
            description: Some("CRM sync".to_owned()),
        }
    }

    fn registered() -> WebhookEvent {
        WebhookEvent::WebhookRegistered {
            url: WebhookUrl::parse("https://hooks.example.org/custos").unwrap(),
            topics: vec![WebhookTopic::RecordCreated, WebhookTopic::RecordUpdated],
            description: Some("CRM sync".to_owned()),
        }
    }

    #[test]
    fn a_webhook_is_registered_with_its_topics_sorted() {
        WebhookTest::with(())
            .given_no_previous_events()
            .when(register("https://hooks.example.org/custos"))
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn urls_are_http_or_https_with_a_host_and_no_credentials() {
        for (url, reason) in [
            ("ftp://hooks.example.org/x", "must use http or https"),
            ("javascript:alert(1)", "must use http or https"),
            ("/relative/path", "is not an absolute URL"),
            (
                "https://user:secret@hooks.example.org/",
                "must not hold a user name or password",
            ),
            (
                "https://hooks.example.org/#part",
                "must not have a fragment",
            ),
        ] {
            assert_eq!(
                WebhookUrl::parse(url),
                Err(WebhookError::InvalidUrl(reason)),
                "{url}"
            );
        }
        let long = format!("https://hooks.example.org/{}", "a".repeat(MAX_URL));
        assert_eq!(
            WebhookUrl::parse(&long),
            Err(WebhookError::InvalidUrl("is longer than 2048 bytes"))
        );
        let plain = WebhookUrl::parse("http://10.0.0.7:8080/in").unwrap();
        assert_eq!(plain.host_and_port(), Some(("10.0.0.7".to_owned(), 8080)));
        let default = WebhookUrl::parse("https://hooks.example.org").unwrap();
        assert_eq!(default.as_str(), "https://hooks.example.org/");
        assert_eq!(
            default.host_and_port(),
            Some(("hooks.example.org".to_owned(), 443))
        );
    }

    #[test]
    fn a_webhook_needs_a_topic() {
        WebhookTest::with(())
            .given_no_previous_events()
            .when(WebhookCommand::Register {
                url: "https://hooks.example.org/".to_owned(),
                topics: vec![],
                description: None,
            })
            .then_expect_error(WebhookError::NoTopics);
    }

    #[test]
    fn changes_disabling_and_removal_are_recorded_once() {
        WebhookTest::with(())
            .given(vec![registered()])
            .when(WebhookCommand::Change {
                url: None,
                topics: Some(vec![
                    WebhookTopic::RecordCreated,
                    WebhookTopic::RecordUpdated,
                ]),
            })
            .then_expect_events(vec![]);
        WebhookTest::with(())
            .given(vec![registered()])
            .when(WebhookCommand::Change {
                url: Some("https://other.example.org/in".to_owned()),
                topics: None,
            })
            .then_expect_events(vec![WebhookEvent::WebhookChanged {
                url: WebhookUrl::parse("https://other.example.org/in").unwrap(),
                topics: vec![WebhookTopic::RecordCreated, WebhookTopic::RecordUpdated],
            }]);
        WebhookTest::with(())
            .given(vec![registered()])
            .when(WebhookCommand::Disable {
                reason: "10 deliveries failed in a row".to_owned(),
            })
            .then_expect_events(vec![WebhookEvent::WebhookDisabled {
                reason: "10 deliveries failed in a row".to_owned(),
            }]);
        WebhookTest::with(())
            .given(vec![
                registered(),
                WebhookEvent::WebhookDisabled {
                    reason: "failing".to_owned(),
                },
            ])
            .when(WebhookCommand::Disable {
                reason: "again".to_owned(),
            })
            .then_expect_events(vec![]);
        WebhookTest::with(())
            .given(vec![registered(), WebhookEvent::WebhookRemoved])
            .when(WebhookCommand::Enable)
            .then_expect_error(WebhookError::Removed);
        WebhookTest::with(())
            .given_no_previous_events()
            .when(WebhookCommand::Enable)
            .then_expect_error(WebhookError::NotFound);
        WebhookTest::with(())
            .given(vec![registered()])
            .when(register("https://hooks.example.org/custos"))
            .then_expect_error(WebhookError::AlreadyExists);
    }

    #[test]
    fn an_enabled_webhook_is_one_registered_not_disabled_nor_removed() {
        let mut webhook = Webhook::default();
        assert!(!webhook.is_enabled());
        webhook.apply(registered());
        assert!(webhook.is_enabled());
        assert_eq!(
            webhook.topics(),
            [WebhookTopic::RecordCreated, WebhookTopic::RecordUpdated]
        );
        webhook.apply(WebhookEvent::WebhookDisabled {
            reason: "x".to_owned(),
        });
        assert!(!webhook.is_enabled());
        webhook.apply(WebhookEvent::WebhookEnabled);
        webhook.apply(WebhookEvent::WebhookRemoved);
        assert!(!webhook.is_enabled());
    }
}
