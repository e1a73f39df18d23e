//! A local HTTP receiver for webhooks: it records every request it answered (headers, body,
//! when) and answers as the test tells it — 204, or a failure status — or holds its answer
//! (so a test can kill the sender mid-delivery): a held request is kept apart and, once
//! released, answered 503, so only a request answered 2xx at once counts as received.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    held: Vec<Received>,
    /// The status answered: 204 unless told otherwise.
    status: Option<u16>,
    holding: bool,
}

/// The running receiver; stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let request = Received {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    };
    {
        let mut locked = inner.lock().unwrap_or_else(|e| e.into_inner());
        if !locked.holding {
            locked.received.push(request);
            return StatusCode::from_u16(locked.status.unwrap_or(204))
                .unwrap_or(StatusCode::NO_CONTENT);
        }
        locked.held.push(request);
    }
    while inner.lock().unwrap_or_else(|e| e.into_inner()).holding {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    StatusCode::SERVICE_UNAVAILABLE
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let router = Router::new()
            .route("/{*path}", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the receiver binds");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, inner, task }
    }

    /// The URL of `path` on the receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Answers `status` from now on (and lets held requests go, answered 503).
    pub fn answer(&self, status: u16) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.status = Some(status);
        inner.holding = false;
    }

    /// Holds every request from now on, unanswered, until [`Receiver::answer`].
    pub fn hold(&self) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).holding = true;
    }

    /// The requests held (and never answered 2xx).
    pub fn held(&self) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .clone()
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .received
            .clone()
    }

    /// Waits 800 ms and checks that nothing more than `count` requests arrived meanwhile (what
    /// should not come did not); what was received.
    pub async fn stays_at(&self, count: usize, why: &str) -> Vec<Received> {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let received = self.received();
        assert_eq!(received.len(), count, "{why}");
        received
    }

    /// Waits (up to 30 s) until what was received satisfies `done`.
    pub async fn until(&self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver waited in vain; it got {} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
