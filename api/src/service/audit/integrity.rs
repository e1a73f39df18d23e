//! Tamper evidence for the service: checkpoints (signed tree heads) made on demand
//! (`createCheckpoint`) and by the schedule in `jobs`, listed; `verifyIntegrity`; and the
//! proofs auditors keep — an event's inclusion, one head's consistency with a later one.

use sqlx::Row;

use crate::error::ApiError;
use crate::infra::integrity::merkle::ProofOf;
use crate::infra::integrity::proof::{to_hex, ConsistencyProof, EventProof, ProvenEvent};
use crate::infra::integrity::tree::{
    self, latest_tree_heads, leaf_of_event, newest_tree_head, tree_head_of_size, Alarm,
    Checkpointed,
};
use crate::infra::integrity::tree_head::{handovers_before, head_from_row, HEAD_COLUMNS};
use crate::infra::integrity::tree_head::{read_witness, witness_file, TreeHead};
use crate::infra::integrity::verify::{verify, Report};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

impl Services {
    /// Extends the tenant's Merkle log and signs a tree head now; `None` when nothing was
    /// written since the last one (or another instance is signing one at this moment). When
    /// the stored log does not agree with the last signed head it signs nothing, raises the
    /// tenant's integrity alarm and answers `CONFLICT`.
    pub async fn create_checkpoint(&self, tenant: &Tenant) -> Result<Option<TreeHead>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        let file = witness_file(&self.data_dir, tenant.id);
        let outcome = tree::checkpoint(&mut conn, tenant.id, &tenant.audit_keys, &file, false)
            .await
            .map_err(ApiError::internal)?;
        match outcome {
            Checkpointed::Nothing => Ok(None),
            Checkpointed::Signed(head) => {
                self.metrics.tree_heads_signed.inc();
                self.clear_alarm(tenant);
                tracing::info!(tenant.id = %tenant.id, tree_head = head.number, tree_size = head.tree_size, "tree head signed");
                Ok(Some(head))
            }
            Checkpointed::Refused(alarm) => {
                Err(self.raise_alarm(tenant, &alarm, "nothing was signed"))
            }
        }
    }

    /// Raises the tenant's integrity alarm (logged at error, listed by `verifyIntegrity`,
    /// counted on `/healthz`); the `CONFLICT` to answer, saying `outcome`.
    fn raise_alarm(&self, tenant: &Tenant, alarm: &Alarm, outcome: &str) -> ApiError {
        tracing::error!(tenant.id = %tenant.id, alarm = %alarm.0, outcome, "security: integrity alarm — the event store does not agree with its last signed tree head");
        self.integrity_alarms
            .lock()
            .expect("alarms")
            .insert(tenant.id, alarm.0.clone());
        ApiError::Conflict(format!("{outcome}: {} (run verifyIntegrity)", alarm.0))
    }

    /// Lowers the tenant's integrity alarm: a checkpoint signed again.
    fn clear_alarm(&self, tenant: &Tenant) {
        self.integrity_alarms
            .lock()
            .expect("alarms")
            .remove(&tenant.id);
    }

    /// Rotates the key that signs the tenant's tree heads: a hand-over tree head, signed by the
    /// key in force over every event logged so far, names a new random key, which signs every
    /// later head. Waits (up to ten seconds) for a checkpoint being signed meanwhile.
    pub async fn rotate_audit_key(&self, tenant: &Tenant) -> Result<TreeHead, ApiError> {
        let file = witness_file(&self.data_dir, tenant.id);
        let outcome = tree::hand_over(&tenant.pool, tenant.id, &tenant.audit_keys, &file)
            .await
            .map_err(ApiError::internal)?;
        match outcome {
            Checkpointed::Signed(head) => {
                self.clear_alarm(tenant);
                tracing::warn!(tenant.id = %tenant.id, tree_head = head.number, key_id = %head.key_id, "security: audit key rotated; the hand-over tree head names the next key");
                Ok(head)
            }
            Checkpointed::Refused(alarm) => {
                Err(self.raise_alarm(tenant, &alarm, "the key was not rotated"))
            }
            Checkpointed::Nothing => Err(ApiError::Conflict(
                "the key was not rotated: a checkpoint is being signed, or nothing is logged yet; try again".into(),
            )),
        }
    }

    /// The tenant's integrity alarm, if its last checkpoint refused to sign.
    pub(crate) fn integrity_alarm(&self, tenant: &Tenant) -> Option<String> {
        self.integrity_alarms
            .lock()
            .expect("alarms")
            .get(&tenant.id)
            .cloned()
    }

    /// How many organisations have an integrity alarm raised.
    pub(crate) fn integrity_alarm_count(&self) -> usize {
        self.integrity_alarms.lock().expect("alarms").len()
    }

    /// The tenant's newest `limit` tree heads, oldest first.
    pub(crate) async fn checkpoints(
        &self,
        tenant: &Tenant,
        limit: i64,
    ) -> Result<Vec<TreeHead>, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        Ok(latest_tree_heads(&mut conn, tenant.id, limit).await?)
    }

    /// Recomputes every chain and the whole Merkle log of the tenant and checks every signed
    /// head (this instance's witness file's too) with the tenant's key; a raised alarm counts
    /// as a problem until a checkpoint signs again.
    pub(crate) async fn verify_integrity(&self, tenant: &Tenant) -> Result<Report, ApiError> {
        let witness =
            read_witness(&witness_file(&self.data_dir, tenant.id)).map_err(ApiError::internal)?;
        let mut conn = tenant.pool.acquire().await?;
        let anchor = tenant.audit_keys.anchor();
        let mut report = verify(&mut conn, tenant.id, Some(anchor), Some(&witness))
            .await
            .map_err(ApiError::internal)?;
        if let Some(alarm) = self.integrity_alarm(tenant) {
            report.checkpoint_problems.push(format!(
                "integrity alarm: the last checkpoint refused to sign: {alarm}"
            ));
        }
        if !report.ok() {
            tracing::error!(tenant.id = %tenant.id, broken = report.broken.len(), checkpoint_problems = report.checkpoint_problems.len(), "security: the event store does not verify");
        }
        Ok(report)
    }

    /// The proof that the event at `sequence` of the stream is in the tree of `tree_size`
    /// events (a signed head's size; the newest head by default). An event not yet in any
    /// signed head gets one first.
    pub(crate) async fn event_proof(
        &self,
        tenant: &Tenant,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
        tree_size: Option<i64>,
    ) -> Result<EventProof, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        // The event, its leaf and the head to prove it against, in one round trip.
        let row = sqlx::query(&format!(
            "SELECT event_type, event_version, payload::text AS payload, metadata::text AS metadata,
                    (extract(epoch FROM recorded_at) * 1000000)::bigint AS recorded_at_micros,
                    prev_hash, e.hash, e.global_position, l.leaf_index, h.*
             FROM events e LEFT JOIN merkle_leaves l USING (global_position)
             LEFT JOIN LATERAL (
                 SELECT {HEAD_COLUMNS} FROM tree_heads
                 WHERE $4::bigint IS NULL OR tree_size = $4
                 ORDER BY number DESC LIMIT 1
             ) AS h ON true
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(tree_size)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(ApiError::NotFound)?;
        let position: i64 = row.try_get("global_position")?;
        let mut head = match row.try_get::<Option<i64>, _>("number")? {
            Some(_) => Some(head_from_row(tenant.id, &row)?),
            None => None,
        };
        let leaf = match row.try_get::<Option<i64>, _>("leaf_index")? {
            Some(leaf) => leaf,
            None => {
                drop(conn);
                let signed = self.create_checkpoint(tenant).await?;
                conn = tenant.pool.acquire().await?;
                if tree_size.is_none() {
                    head = match signed {
                        Some(signed) => Some(signed),
                        None => newest_tree_head(&mut conn, tenant.id).await?,
                    };
                }
                leaf_of_event(&mut conn, position).await?.ok_or_else(|| {
                    ApiError::Conflict(
                        "the event is not in a signed tree head yet (a transaction older than it is still running): ask again in a moment".into(),
                    )
                })?
            }
        };
        let head = match (tree_size, head) {
            (Some(size), None) => return Err(no_head("treeSize", size)),
            (Some(size), Some(_)) if leaf >= size => {
                return Err(ApiError::validation(
                    "treeSize",
                    format!("the event is leaf {leaf}, after the first {size} events"),
                ))
            }
            (_, Some(head)) => head,
            (None, None) => {
                return Err(ApiError::internal(anyhow::anyhow!(
                    "a leaf without a tree head"
                )))
            }
        };
        let path = tree::proof(
            &mut conn,
            ProofOf::Inclusion {
                index: leaf as u64,
                size: head.tree_size as u64,
            },
        )
        .await?
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("the Merkle log lacks a node of a proof"))
        })?;
        let key_handovers = self.handovers(tenant, &mut conn).await?;
        Ok(EventProof {
            key_handovers,
            leaf_index: leaf,
            tree_size: head.tree_size,
            audit_path: to_hex(&path),
            event: ProvenEvent {
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                sequence,
                event_type: row.try_get("event_type")?,
                event_version: row.try_get("event_version")?,
                payload: row.try_get("payload")?,
                metadata: row.try_get("metadata")?,
                recorded_at_micros: row.try_get("recorded_at_micros")?,
                previous_hash: row
                    .try_get::<Option<Vec<u8>>, _>("prev_hash")?
                    .map(hex::encode),
                hash: hex::encode(row.try_get::<Vec<u8>, _>("hash")?),
            },
            tree_head: head,
        })
    }

    /// The proof that the tree of `from_size` events is a prefix of the tree of `to_size`
    /// (both sizes of signed heads; the newest head by default).
    pub(crate) async fn consistency_proof(
        &self,
        tenant: &Tenant,
        from_size: i64,
        to_size: Option<i64>,
    ) -> Result<ConsistencyProof, ApiError> {
        let mut conn = tenant.pool.acquire().await?;
        let newest = newest_tree_head(&mut conn, tenant.id).await?;
        let newest_size = newest.as_ref().map_or(0, |h| h.tree_size);
        let to_size = to_size.unwrap_or(newest_size);
        if to_size > newest_size {
            return Err(ApiError::validation(
                "toSize",
                format!("beyond the tree: its newest signed head holds {newest_size} events"),
            ));
        }
        if from_size < 1 || from_size > to_size {
            return Err(ApiError::validation(
                "fromSize",
                format!("must be from 1 to {to_size}"),
            ));
        }
        let to_head = match newest {
            Some(newest) if newest.tree_size == to_size => newest,
            _ => tree_head_of_size(&mut conn, tenant.id, to_size)
                .await?
                .ok_or_else(|| no_head("toSize", to_size))?,
        };
        let from_head = tree_head_of_size(&mut conn, tenant.id, from_size)
            .await?
            .ok_or_else(|| no_head("fromSize", from_size))?;
        let path = tree::proof(
            &mut conn,
            ProofOf::Consistency {
                from: from_size as u64,
                to: to_size as u64,
            },
        )
        .await?
        .ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("the Merkle log lacks a node of a proof"))
        })?;
        let key_handovers = self.handovers(tenant, &mut conn).await?;
        Ok(ConsistencyProof {
            key_handovers,
            from_size,
            to_size,
            path: to_hex(&path),
            from_head,
            to_head,
        })
    }
}

impl Services {
    /// Every hand-over of the tenant's signing key, oldest first (usually none): a proof
    /// carries them all, so it checks from any key the auditor pinned, older or newer than
    /// the one that signed it.
    async fn handovers(
        &self,
        tenant: &Tenant,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Vec<TreeHead>, ApiError> {
        Ok(handovers_before(conn, tenant.id, i64::MAX).await?)
    }
}

fn no_head(field: &str, size: i64) -> ApiError {
    ApiError::validation(
        field,
        format!(
            "no signed tree head holds exactly {size} events (`checkpoints` lists their sizes)"
        ),
    )
}
