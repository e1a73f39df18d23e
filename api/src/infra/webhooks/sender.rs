//! The HTTP client that delivers webhooks: rustls, no redirects (a 3xx is a failure: following
//! it would let an endpoint send the payload somewhere the administrators did not register),
//! no proxy from the environment, a time limit per delivery, at most a few kilobytes of an
//! answer read — and only public addresses reached (checked when the connection is made, on
//! the addresses a name resolves to then), unless the provider allows private ones.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most of an endpoint's answer read (then the connection is dropped).
const MAX_ANSWER: usize = 4 * 1024;

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

/// Whether a delivery may reach `ip`: never a link-local address (cloud metadata services)
/// nor an unspecified, broadcast or multicast one; private, loopback and other non-global
/// ranges only when `allow_private`.
pub(crate) fn reachable(ip: IpAddr, allow_private: bool) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            if v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                return false;
            }
            let private = v4.is_private()
                || v4.is_loopback()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240;
            allow_private || !private
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if (first & 0xffc0) == 0xfe80 || v6.is_unspecified() || v6.is_multicast() {
                return false;
            }
            let private = v6.is_loopback()
                || (first & 0xfe00) == 0xfc00
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                || (first == 0x0064 && v6.segments()[1] == 0xff9b);
            allow_private || !private
        }
    }
}

/// Refused: the endpoint's name resolves to no address a delivery may reach.
#[derive(Debug)]
struct NotReachable;

impl std::fmt::Display for NotReachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the endpoint's address is not public")
    }
}

impl std::error::Error for NotReachable {}

/// Resolves names as the system does, keeping only the addresses [`reachable`] allows.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<SocketAddr> = found
                .filter(|addr| reachable(addr.ip(), allow_private))
                .collect();
            if kept.is_empty() {
                return Err(Box::new(NotReachable) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
pub(crate) struct Sender {
    client: reqwest::Client,
    allow_private: bool,
}

impl Sender {
    pub(crate) fn new(timeout: Duration, allow_private: bool) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("Custos-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(Self {
            client,
            allow_private,
        })
    }

    /// POSTs one message; never fails: every outcome is an [`Answer`].
    pub(crate) async fn send(&self, message: Message<'_>) -> Answer {
        let started = Instant::now();
        // An address in the URL itself is not resolved: it is checked here.
        let literal = url::Url::parse(message.url)
            .ok()
            .and_then(|url| match url.host() {
                Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
                Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
                _ => None,
            });
        if literal.is_some_and(|ip| !reachable(ip, self.allow_private)) {
            return Answer {
                status: None,
                error: Some(NotReachable.to_string()),
                duration: started.elapsed(),
            };
        }
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
            Ok(mut response) => {
                let status = response.status();
                // The body is not kept; reading a little of it lets a short answer's
                // connection be reused. A longer one is dropped with its connection.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut read = 0;
                    while let Ok(Some(chunk)) = response.chunk().await {
                        read += chunk.len();
                        if read > MAX_ANSWER {
                            break;
                        }
                    }
                })
                .await;
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
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if current.downcast_ref::<NotReachable>().is_some() {
            return NotReachable.to_string();
        }
        cause = current.source();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_reached_unless_private_ones_are_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for public in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(reachable(ip(public), false), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "::ffff:10.0.0.1",
            "0.0.0.1",
        ] {
            assert!(!reachable(ip(private), false), "{private}");
            assert!(reachable(ip(private), true), "{private} when allowed");
        }
        for never in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!reachable(ip(never), true), "{never}");
        }
    }
}
