//! The HTTP client that delivers webhooks: rustls, no redirects (a 3xx is a failure: following
//! it would let an endpoint send the payload somewhere the administrators did not register),
//! a time limit per delivery, and at most a few kilobytes of an answer read.

use std::time::{Duration, Instant};

/// What an endpoint did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    /// Why it failed, in words that carry no payload and no secret; `None` on a 2xx.
    pub error: Option<String>,
    pub duration: Duration,
}

impl Answer {
    pub(crate) fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// One message, signed.
pub(crate) struct Message<'a> {
    pub url: &'a str,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: &'a str,
    pub body: Vec<u8>,
}

#[derive(Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub(crate) fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("Custos-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self { client })
    }

    /// POSTs one message; never fails: every outcome is an [`Answer`].
    pub(crate) async fn send(&self, message: Message<'_>) -> Answer {
        let started = Instant::now();
        let sent = self
            .client
            .post(message.url)
            .header("content-type", "application/json")
            .header("webhook-id", message.id)
            .header("webhook-timestamp", message.timestamp.to_string())
            .header("webhook-signature", message.signature)
            .body(message.body)
            .send()
            .await;
        let (status, error) = match sent {
            Ok(response) => {
                let status = response.status();
                // The body is not kept; reading (a little of) it lets the connection be reused.
                let _ = tokio::time::timeout(Duration::from_secs(1), response.bytes()).await;
                let error = (!status.is_success()).then(|| match status.as_u16() {
                    300..=399 => format!("answered {status} (redirects are not followed)"),
                    _ => format!("answered {status}"),
                });
                (Some(status.as_u16()), error)
            }
            Err(err) => (None, Some(describe(&err))),
        };
        Answer {
            status,
            error,
            duration: started.elapsed(),
        }
    }
}

/// A failed request in a few words, without its URL (which may carry a token in its query).
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "no answer in time".to_owned()
    } else if err.is_connect() {
        "could not connect".to_owned()
    } else if err.is_request() || err.is_body() {
        "the request failed".to_owned()
    } else {
        "the delivery failed".to_owned()
    }
}
