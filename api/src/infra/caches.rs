//! Caches of what a tenant database holds, kept in memory between requests, and how every
//! instance of the service learns at once that a copy went stale.
//!
//! Tenant databases announce every change to cached rows on [`CHANNEL`] (the triggers of
//! migration 0024; PostgreSQL delivers a notification when its transaction commits). Each open
//! context listens on a connection of its own ([`listen`]). While that connection is down
//! nothing is cached — every lookup reads the database — and whatever was cached is dropped when
//! it goes down and again when it is back, since announcements made in between are lost. The
//! instance's own changes also drop its copies directly, before the change is answered, so that
//! the same session's next request sees it without waiting for the announcement.
//!
//! A lookup takes a [`Ticket`] before it reads the database and stores what it read only if
//! nothing was dropped meanwhile: a read that raced a change never caches the old value.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::task::JoinHandle;

/// The channel tenant databases announce changes on; the payload names what changed.
pub(crate) const CHANNEL: &str = "custos_cache";

/// How often a listening context announces a heartbeat through its own pool, and how long it
/// may hear nothing at all (heartbeats included) before it counts itself deaf: a connection
/// that died without an error, or a pooler that accepts `LISTEN` and delivers nothing, turns
/// caching off within this time.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(4);
const DEAF_AFTER: Duration = Duration::from_secs(10);
const HEARTBEAT: &str = "heartbeat";
/// The wait before listening again after the connection failed, doubling up to the maximum.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Whether a context hears its database's announcements; its caches work only while it does.
#[derive(Debug, Default)]
pub(crate) struct Hearing(AtomicBool);

impl Hearing {
    pub(crate) fn hears(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a lookup holds while it reads the database: [`Cache::put`] stores the answer only if
/// nothing was dropped since it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket(u64);

struct Entry<V> {
    value: V,
    until: Instant,
}

struct Entries<K: Hash + Eq, V> {
    /// Moves on every drop; a ticket of an older generation stores nothing.
    generation: u64,
    entries: lru::LruCache<K, Entry<V>>,
}

/// A bounded, least-recently-used cache that holds nothing while its context does not hear
/// announcements.
pub(crate) struct Cache<K: Hash + Eq, V> {
    entries: Mutex<Entries<K, V>>,
    hearing: Arc<Hearing>,
}

impl<K: Hash + Eq, V: Clone> Cache<K, V> {
    pub(crate) fn new(capacity: usize, hearing: Arc<Hearing>) -> Self {
        Self {
            entries: Mutex::new(Entries {
                generation: 0,
                entries: lru::LruCache::new(
                    NonZeroUsize::new(capacity).expect("a cache holds something"),
                ),
            }),
            hearing,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries<K, V>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Taken before reading what [`Self::put`] will store.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.lock().generation)
    }

    /// The cached value, while fresh and while the context hears announcements.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        if !self.hearing.hears() {
            return None;
        }
        let mut entries = self.lock();
        match entries.entries.get(key) {
            Some(entry) if entry.until > Instant::now() => Some(entry.value.clone()),
            Some(_) => {
                entries.entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `fresh_for`, unless something was dropped since `ticket` was taken or
    /// the context does not hear announcements.
    pub(crate) fn put(&self, ticket: Ticket, key: K, value: V, fresh_for: Duration) {
        let mut entries = self.lock();
        if entries.generation != ticket.0 || !self.hearing.hears() || fresh_for.is_zero() {
            return;
        }
        let until = Instant::now() + fresh_for;
        entries.entries.put(key, Entry { value, until });
    }

    /// Drops one value.
    pub(crate) fn forget(&self, key: &K) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.entries.pop(key);
    }

    /// Drops every value.
    pub(crate) fn clear(&self) {
        let mut entries = self.lock();
        entries.generation += 1;
        entries.entries.clear();
    }
}

/// What hears a database's announcements through [`listen`]: a tenant's caches.
pub(crate) trait Listener: Send + Sync + 'static {
    /// Drops what an announcement names.
    fn announced(&self, topic: &str);
    /// Drops every copy (hearing began or ended).
    fn drop_all(&self);
}

/// Starts hearing the announcements of the database `pool` connects to, on a connection of its
/// own, and tells `listener`; `hearing` is on while it hears (the caches work from then on).
/// Dropping the handle stops it.
pub(crate) fn listen(
    pool: &PgPool,
    hearing: Arc<Hearing>,
    listener: Arc<dyn Listener>,
) -> Listening {
    let listener_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with((*pool.connect_options()).clone());
    Listening(tokio::spawn(hear(
        hearing,
        listener,
        listener_pool,
        pool.clone(),
    )))
}

/// Turns hearing on or off, dropping every copy both ways: nothing read before (or while deaf)
/// is trusted afterwards.
pub(crate) fn set_hearing(hearing: &Hearing, listener: &dyn Listener, hears: bool) {
    listener.drop_all();
    hearing.0.store(hears, Ordering::Release);
    listener.drop_all();
}

/// The task that hears a tenant's announcements; dropping it stops it (and the caches stop
/// with it, as nothing tells them of changes any more).
pub(crate) struct Listening(JoinHandle<()>);

impl Drop for Listening {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn hear(hearing: Arc<Hearing>, caches: Arc<dyn Listener>, listen: PgPool, pool: PgPool) {
    let database = pool.connect_options().get_database().map(str::to_owned);
    let mut retry = RETRY_FIRST;
    loop {
        match PgListener::connect_with(&listen).await {
            Ok(mut listener) => {
                // A lost connection ends this round at once instead of reconnecting inside
                // `try_recv`, where values read meanwhile would be cached unheard.
                listener.eager_reconnect(false);
                if listener.listen(CHANNEL).await.is_ok() {
                    set_hearing(&hearing, caches.as_ref(), true);
                    retry = RETRY_FIRST;
                    let _beating = Listening(tokio::spawn(beat(pool.clone())));
                    // Lost, failed, or silent for too long: start over deaf.
                    while let Ok(Ok(Some(notification))) =
                        tokio::time::timeout(DEAF_AFTER, listener.try_recv()).await
                    {
                        if notification.payload() != HEARTBEAT {
                            caches.announced(notification.payload());
                        }
                    }
                    set_hearing(&hearing, caches.as_ref(), false);
                    if pool.is_closed() || listen.is_closed() {
                        return;
                    }
                    tracing::warn!(database = ?database, "no longer hearing cache announcements: caching is off until they are heard again");
                }
            }
            Err(err) => {
                tracing::warn!(database = ?database, error = %err, "cannot listen for cache announcements: caching is off");
            }
        }
        if pool.is_closed() || listen.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Announces a heartbeat every [`HEARTBEAT_EVERY`]; a failure shows as silence to the listener.
async fn beat(pool: PgPool) {
    loop {
        let _silence_tells = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(HEARTBEAT)
            .execute(&pool)
            .await;
        tokio::time::sleep(HEARTBEAT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hearing_cache() -> Cache<u32, &'static str> {
        let hearing = Arc::new(Hearing::default());
        hearing.0.store(true, Ordering::Release);
        Cache::new(4, hearing)
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_value_is_kept_while_fresh() {
        let cache = hearing_cache();
        cache.put(cache.ticket(), 1, "one", LONG);
        cache.put(cache.ticket(), 2, "two", Duration::from_nanos(1));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(cache.get(&1), Some("one"));
        assert_eq!(cache.get(&2), None, "stale");
    }

    #[test]
    fn a_read_that_raced_a_drop_stores_nothing() {
        let cache = hearing_cache();
        let ticket = cache.ticket();
        cache.forget(&7);
        cache.put(ticket, 1, "read before the change", LONG);
        assert_eq!(cache.get(&1), None);
        let ticket = cache.ticket();
        cache.clear();
        cache.put(ticket, 1, "read before the change", LONG);
        assert_eq!(cache.get(&1), None);
        cache.put(cache.ticket(), 1, "read after", LONG);
        assert_eq!(cache.get(&1), Some("read after"));
    }

    #[test]
    fn nothing_is_cached_while_the_context_does_not_hear() {
        let cache: Cache<u32, &str> = Cache::new(4, Arc::new(Hearing::default()));
        cache.put(cache.ticket(), 1, "one", LONG);
        assert_eq!(cache.get(&1), None);
    }
}
