//! Erasures that survive a restore: each is written to the organisation's erasure ledger
//! (`infra::erasure_ledger`, outside the database and its backups) before the subject's key is
//! destroyed, and every start of Custos — `serve` and every command that opens the
//! organisations — replays the ledgers before anything is served: a key the ledger says was
//! erased but the database holds (a restored backup, an archive brought back) is destroyed
//! again, the person's sessions and second factor removed, and every read model rebuilt
//! without them.

use std::collections::HashMap;
use std::sync::Mutex;

use custos_projections::Projection;
use uuid::Uuid;

use crate::error::{redacted, ApiError};
use crate::infra::caches::Listener as _;
use crate::infra::integrity::read_models;
use crate::infra::projector::{catch_up, reset};
use crate::infra::tenancy::tenant::{Reading, Tenant};
use crate::service::Services;

impl Services {
    /// Writes `subject`'s erasure to the ledger (durably); the key may be destroyed after.
    pub(crate) fn ledger_erasure(&self, tenant: &Tenant, subject: Uuid) -> Result<(), ApiError> {
        self.erasures
            .append(tenant.id, subject)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("writing the erasure ledger: {e}")))
    }

    /// After `tenant`'s erasure: removes the copies of read models that rebuilds left in its
    /// database (a rebuild killed before its swap), which hold the values of
    /// everyone in them, the erased subject too. A rebuild still running is waited for in the
    /// background (it swaps its copy in or removes it, unless it is killed); the erasure does
    /// not wait. One removal runs at a time per organisation, on one administrator's
    /// connection: an erasure while one is under way asks it for one more round. What cannot
    /// be removed is logged: the next start removes it.
    pub(crate) async fn remove_rebuild_copies(&self, tenant: &Tenant) {
        if let Err(e) = self.spawn_rebuild_copies_removal(tenant).await {
            copies_not_removed(tenant.id, &e);
        }
    }

    async fn spawn_rebuild_copies_removal(&self, tenant: &Tenant) -> anyhow::Result<()> {
        let mut conn = tenant.pool.acquire().await?;
        if !read_models::any_rebuild(&mut conn).await? {
            return Ok(());
        }
        drop(conn);
        let removals = self.rebuild_copies_removals.clone();
        {
            let mut under_way = pending(&removals);
            if let Some(again) = under_way.get_mut(&tenant.id) {
                *again = true;
                return Ok(());
            }
            under_way.insert(tenant.id, false);
        }
        let admin = match self.tenancy.row(tenant.id).await {
            Ok(Some(row)) => self.tenancy.admin_connection(&row).await,
            Ok(None) => Err(anyhow::anyhow!(
                "the organisation is no longer in the catalog"
            )),
            Err(e) => Err(e.into()),
        };
        let mut admin = match admin {
            Ok(admin) => admin,
            Err(e) => {
                pending(&removals).remove(&tenant.id);
                return Err(e);
            }
        };
        let tenant_id = tenant.id;
        tokio::spawn(async move {
            let projections = custos_projections::all();
            let projections: Vec<&dyn Projection> = projections.iter().map(AsRef::as_ref).collect();
            loop {
                let removed = read_models::remove_once_rebuilds_end(&mut admin, &projections).await;
                let again = {
                    let mut under_way = pending(&removals);
                    let again = removed.is_ok() && under_way.get(&tenant_id) == Some(&true);
                    if again {
                        under_way.insert(tenant_id, false);
                    } else {
                        under_way.remove(&tenant_id);
                    }
                    again
                };
                match removed {
                    Ok(0) => {}
                    Ok(removed) => {
                        tracing::warn!(tenant.id = %tenant_id, tables = removed, "removed the tables of read-model rebuilds that did not finish, after an erasure")
                    }
                    Err(e) => copies_not_removed(tenant_id, &e.into()),
                }
                if !again {
                    break;
                }
            }
            let _ = sqlx::Connection::close(admin).await;
        });
        Ok(())
    }

    /// Replays every organisation's erasure ledger (see the module).
    pub(crate) async fn replay_erasure_ledgers(&self) -> anyhow::Result<()> {
        for row in self.tenancy.list().await? {
            self.replay_erasure_ledger(row.id).await?;
        }
        Ok(())
    }

    /// Replays one organisation's ledger; how many keys were destroyed again.
    pub(crate) async fn replay_erasure_ledger(&self, tenant_id: Uuid) -> anyhow::Result<usize> {
        let ledger = self.erasures.read(tenant_id)?;
        if let Some(line) = ledger.broken_at {
            tracing::error!(tenant.id = %tenant_id, line, "security: the erasure ledger does not verify from this line on; the erasures before it are replayed");
        }
        if ledger.erased.is_empty() {
            return Ok(0);
        }
        let subjects: Vec<Uuid> = ledger.erased.iter().map(|e| e.subject).collect();
        // Usually nothing came back: one query tells, without opening the organisation (its
        // pool and projectors) at every start.
        let Some(row) = self.tenancy.row(tenant_id).await? else {
            return Ok(0);
        };
        let mut conn = self.tenancy.admin_connection(&row).await?;
        let back: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT FROM subject_keys
                            WHERE subject_id = ANY($1) AND wrapped_key IS NOT NULL)",
        )
        .bind(&subjects)
        .fetch_one(&mut conn)
        .await?;
        sqlx::Connection::close(conn).await?;
        if !back {
            return Ok(0);
        }
        let Some(tenant) = self.tenancy.get(tenant_id).await? else {
            return Ok(0);
        };
        let times: Vec<_> = ledger.erased.iter().map(|e| e.erased_at).collect();
        let mut tx = tenant.pool.begin().await?;
        let revived: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE subject_keys k SET wrapped_key = NULL, erased_at = l.at
             FROM unnest($1::uuid[], $2::timestamptz[]) AS l (id, at)
             WHERE k.subject_id = l.id AND k.wrapped_key IS NOT NULL
             RETURNING k.subject_id",
        )
        .bind(&subjects)
        .bind(&times)
        .fetch_all(&mut *tx)
        .await?;
        if revived.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        for statement in [
            "DELETE FROM sessions WHERE user_id = ANY($1)",
            "DELETE FROM two_factor_secrets WHERE user_id = ANY($1)",
            "DELETE FROM recovery_codes WHERE user_id = ANY($1)",
        ] {
            sqlx::query(statement)
                .bind(&revived)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        tenant.caches.drop_all();
        tracing::warn!(tenant.id = %tenant_id, keys = revived.len(), "security: keys the erasure ledger says were erased were back (a restore or an import): destroyed again; rebuilding the read models");
        let reading = Reading::new(&tenant.pool, self.tenancy.master_key(), tenant_id);
        for projection in &reading.read_models {
            reset(&tenant.pool, projection.as_ref()).await?;
        }
        catch_up(&tenant.pool, &reading.log, &reading.read_models).await?;
        Ok(revived.len())
    }
}

/// The organisations whose removal of rebuild copies is under way, and whether it was asked for
/// one more round.
fn pending(
    removals: &Mutex<HashMap<Uuid, bool>>,
) -> std::sync::MutexGuard<'_, HashMap<Uuid, bool>> {
    removals
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn copies_not_removed(tenant_id: Uuid, error: &anyhow::Error) {
    tracing::error!(tenant.id = %tenant_id, error = %redacted(error), "security: the copies read-model rebuilds left were not removed after an erasure; run `custos migrate`");
}
