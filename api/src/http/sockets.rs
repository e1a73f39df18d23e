//! The WebSocket connections open per organisation, for the limit on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

/// The connections open per organisation, for the per-organisation limit.
#[derive(Default)]
pub(crate) struct Sockets {
    open: Mutex<HashMap<Uuid, usize>>,
}

impl Sockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more connection of `tenant`, if it has fewer than `max` open.
    pub(super) fn take(self: &Arc<Self>, tenant: Uuid, max: usize) -> Option<SocketPlace> {
        let mut open = self.lock();
        let count = open.entry(tenant).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SocketPlace {
            sockets: self.clone(),
            tenant,
        })
    }
}

/// One organisation's connection, counted until dropped.
pub(super) struct SocketPlace {
    sockets: Arc<Sockets>,
    tenant: Uuid,
}

impl Drop for SocketPlace {
    fn drop(&mut self) {
        let mut open = self.sockets.lock();
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organisation_has_at_most_its_share_of_connections() {
        let sockets = Arc::new(Sockets::default());
        let tenant = Uuid::new_v4();
        let first = sockets.take(tenant, 2).expect("one");
        let _second = sockets.take(tenant, 2).expect("two");
        assert!(sockets.take(tenant, 2).is_none());
        assert!(
            sockets.take(Uuid::new_v4(), 2).is_some(),
            "another organisation"
        );
        drop(first);
        assert!(sockets.take(tenant, 2).is_some());
    }
}
