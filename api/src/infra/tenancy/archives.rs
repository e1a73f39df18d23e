//! An organisation leaving and arriving whole: its archive written from its database, and an
//! archive brought in as a new organisation on this server — created `provisioning`, filled
//! and verified in one transaction, its witness file written, its signing key handed over to
//! a new one (the archived key travelled in a file), its read models rebuilt, and only then put
//! in service. Any failure removes everything the import created.

use secrecy::{SecretBox, SecretString};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;
use tokio::io::{AsyncBufRead, AsyncWrite};
use uuid::Uuid;

use super::catalog::{ProvisionError, Tenancy};
use super::tenant::{anchor_mac, two_factor_key, Reading, Tenant, TenantRow};
use crate::config::Region;
use crate::infra::archive::export::{export, Exported, TenantSecrets};
use crate::infra::archive::format::{
    ArchiveError, ArchiveKey, Header, Kdf, KeyLock, Opener, OrganizationEntry, Protection,
};
use crate::infra::archive::import::{import, read_header, Imported};
use crate::infra::integrity::tree::{self, stored_heads, Checkpointed};
use crate::infra::integrity::tree_head::{append_witness, last_tree_head, witness_file};
use crate::infra::projector::fill as fill_read_models;

/// Where an imported organisation goes: the archive's slug and region unless given.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    pub slug: Option<String>,
    pub region: Option<Region>,
}

/// What an import made.
#[derive(Debug, Clone)]
pub struct Arrived {
    pub(crate) row: TenantRow,
    pub imported: Imported,
    /// The hand-over tree head that retired the key the archive carried.
    pub handover: i64,
    /// How long filling and verifying the database took, and rebuilding the read models.
    pub loaded: std::time::Duration,
    pub rebuilt: std::time::Duration,
}

/// An archive whose header was read and whose key was opened.
pub struct OpenedArchive {
    header: Header,
    line: Vec<u8>,
    key: ArchiveKey,
}

impl OpenedArchive {
    /// The organisation's first signing key (generation 0), where verification starts: compare
    /// it with the one its auditors know before trusting the archive's history.
    pub(crate) fn anchor(&self) -> &[u8] {
        &self.header.audit_anchor
    }

    /// Whose archive it is and when it was written.
    pub(crate) fn describe(&self) -> String {
        let o = &self.header.organization;
        format!(
            "archive of {} ({}, region {}), written {} by {}",
            o.slug, o.id, o.region, self.header.created_at, self.header.written_by
        )
    }
}

/// Where a replaced database's content comes from.
enum Source<'a> {
    /// The organisation's own database, exported to an age identity only this process holds
    /// (a move).
    Export,
    /// One of the organisation's archives (a restore from a backup archive).
    Archive {
        path: &'a std::path::Path,
        opener: Opener,
    },
}

/// What a move did.
#[derive(Debug, Clone)]
pub(crate) struct Moved {
    pub from: &'static str,
    pub to: &'static str,
    pub arrived: Arrived,
}

/// Derives an archive key off the async threads (Argon2id takes a second of a core).
pub(crate) async fn derive_key(
    passphrase: SecretString,
    kdf: Kdf,
) -> Result<ArchiveKey, ArchiveError> {
    unlock_key(KeyLock::Passphrase(kdf), Opener::Passphrase(passphrase)).await
}

/// Opens the archive key `lock` keeps with `opener`, off the async threads.
async fn unlock_key(lock: KeyLock, opener: Opener) -> Result<ArchiveKey, ArchiveError> {
    tokio::task::spawn_blocking(move || ArchiveKey::unlock(&lock, &opener))
        .await
        .map_err(|e| ArchiveError::Other(e.into()))?
}

/// A new archive key that `protection` opens, and how the archive keeps it: derived from a
/// passphrase (Argon2id, its 64 MiB and a second of a core) or random and encrypted to age
/// recipients (no derivation).
pub(crate) async fn lock_key(
    protection: Protection,
) -> Result<(ArchiveKey, KeyLock), ArchiveError> {
    protection.check()?;
    match protection {
        Protection::Passphrase(passphrase) => {
            let kdf = Kdf::new();
            let key = derive_key(passphrase, kdf.clone()).await?;
            Ok((key, KeyLock::Passphrase(kdf)))
        }
        Protection::Recipients(recipients) => ArchiveKey::for_recipients(&recipients),
    }
}

impl Tenancy {
    /// Writes the archive of `tenant` to `writer`, its secrets sealed under a key that
    /// `protection` opens.
    pub async fn export_archive<W: AsyncWrite + Unpin>(
        &self,
        tenant: &Tenant,
        protection: Protection,
        writer: W,
        data_dir: &std::path::Path,
    ) -> Result<Exported, ArchiveError> {
        let (key, lock) = lock_key(protection).await?;
        let entry = self.organization_entry(tenant.id).await?;
        write_archive(
            tenant,
            entry,
            &key,
            lock,
            &witness_file(data_dir, tenant.id),
            writer,
        )
        .await
    }

    /// The organisation as an archive describes it, from the catalog.
    pub(crate) async fn organization_entry(
        &self,
        id: Uuid,
    ) -> Result<OrganizationEntry, ArchiveError> {
        let (slug, name, region, status, plan, trial_ends_at): (
            String,
            String,
            String,
            String,
            String,
            Option<chrono::DateTime<chrono::Utc>>,
        ) = sqlx::query_as(
            "SELECT slug, name, region, status, plan, trial_ends_at FROM tenants WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.catalog())
        .await?;
        Ok(OrganizationEntry {
            id,
            slug,
            name,
            region,
            status,
            plan,
            trial_ends_at,
        })
    }

    /// Moves an organisation to another region's server: it stops being served, its database
    /// is fenced (no instance can write there), its archive written to a scratch file under a
    /// random age identity that only this process holds, imported and verified into a new
    /// database there (the signing key handed over, the read models rebuilt), and the catalog
    /// switched; then the old database is dropped. Until the switch, any failure removes the
    /// new database and puts the organisation back in service where it was; a killed move is
    /// finished or undone by the next start. Sessions do not move: users log in again.
    pub(crate) async fn move_tenant(
        &self,
        slug: &str,
        region: Region,
        data_dir: &std::path::Path,
    ) -> Result<Moved, ArchiveError> {
        let row = self.in_service(slug).await?;
        if row.region == region.as_str() {
            return Err(ArchiveError::Refused(format!(
                "`{slug}` is already in region {}",
                region.as_str()
            )));
        }
        self.replace_database(row, region, Source::Export, data_dir)
            .await
    }

    /// Puts an organisation back as one of its backup archives holds it: like a move within
    /// its region, with the archive (checked whole first) as the new database's content.
    /// What was written after the archive is gone, except erasures (the caller replays the
    /// ledger). The witness file is started again from the restored heads; the one that
    /// witnessed the history now replaced is kept beside it (`.replaced-<time>`), so an
    /// auditor can see what the restore rolled back.
    pub(crate) async fn restore_tenant(
        &self,
        row: TenantRow,
        archive: &std::path::Path,
        passphrase: SecretString,
        data_dir: &std::path::Path,
    ) -> Result<Moved, ArchiveError> {
        let region: Region = row
            .region
            .parse()
            .map_err(|()| ArchiveError::Refused(format!("unknown region {}", row.region)))?;
        let source = Source::Archive {
            path: archive,
            opener: Opener::Passphrase(passphrase),
        };
        self.replace_database(row, region, source, data_dir).await
    }

    /// The catalog entry of the organisation in service with this slug.
    pub(crate) async fn in_service(&self, slug: &str) -> Result<TenantRow, ArchiveError> {
        self.in_service_by_slug(slug).await?.ok_or_else(|| {
            ArchiveError::Refused(format!("no organisation in service has the slug `{slug}`"))
        })
    }

    /// Gives the organisation of `row` a new database on `region`'s server, filled from
    /// `source`, and drops its old one (see [`Tenancy::move_tenant`]).
    async fn replace_database(
        &self,
        row: TenantRow,
        region: Region,
        source: Source<'_>,
        data_dir: &std::path::Path,
    ) -> Result<Moved, ArchiveError> {
        let slug = row.slug.clone();
        let from: Region = row
            .region
            .parse()
            .map_err(|()| ArchiveError::Refused(format!("unknown region {}", row.region)))?;
        let lock = self.organization_lock(row.id).await?.ok_or_else(|| {
            ArchiveError::Refused(format!(
                "`{slug}` is being moved or restored by another process"
            ))
        })?;
        let database = format!("custos_t_{}", Uuid::now_v7().simple());
        let target = TenantRow {
            region: region.as_str().to_owned(),
            database_name: database.clone(),
            role_name: database.clone(),
            ..row.clone()
        };
        let claimed = sqlx::query(
            "UPDATE tenants SET move = jsonb_build_object('region', $2::text, 'database', $3::text)
             WHERE id = $1 AND move IS NULL",
        )
        .bind(row.id)
        .bind(region.as_str())
        .bind(&database)
        .execute(self.catalog())
        .await?;
        if claimed.rows_affected() != 1 {
            lock.release().await;
            return Err(ArchiveError::Refused(format!(
                "`{slug}` is being moved or restored"
            )));
        }
        self.close_tenant(row.id).await;
        let scratch = data_dir.join("moves").join(format!(
            "{}-{}.custos-archive",
            row.id,
            Uuid::now_v7().simple()
        ));
        // The new database's heads go to a scratch witness file until the switch: a failed
        // move must leave the old database's witness file as it was.
        let scratch_witness = scratch.with_extension("witness.jsonl");
        let restoring = matches!(source, Source::Archive { .. });
        let moved = self
            .copy_to(&row, &target, region, source, &scratch, &scratch_witness)
            .await;
        let _ = tokio::fs::remove_file(&scratch).await;
        let result = match moved {
            Ok(arrived) => {
                sqlx::query(
                    "UPDATE tenants SET region = $2, database_name = $3, role_name = $3,
                            move = jsonb_build_object('drop', $4::text, 'region', $5::text),
                            updated_at = now()
                     WHERE id = $1",
                )
                .bind(row.id)
                .bind(region.as_str())
                .bind(&database)
                .bind(&row.database_name)
                .bind(from.as_str())
                .execute(self.catalog())
                .await?;
                let file = witness_file(data_dir, row.id);
                let witnessed = if restoring {
                    tracing::info!(tenant.id = %row.id, "organisation restored from a backup archive; dropping the database it replaced");
                    replace_witness(&file, &scratch_witness)
                } else {
                    tracing::info!(tenant.id = %row.id, from = from.as_str(), to = region.as_str(), "organisation moved; dropping its old database");
                    // The real witness file now gets the new database's heads (the next
                    // checkpoint would append them too).
                    async {
                        let since = last_tree_head(&file)?.map_or(0, |h| h.number);
                        let mut conn = self.admin_connection(&target).await?;
                        let heads: Vec<_> = stored_heads(&mut conn, row.id)
                            .await?
                            .into_iter()
                            .map(|s| s.head)
                            .filter(|h| h.number > since)
                            .collect();
                        let _ = conn.close().await;
                        append_witness(&file, &heads)
                    }
                    .await
                };
                if let Err(err) = witnessed {
                    tracing::error!(tenant.id = %row.id, error = %err, "writing the organisation's new tree heads to its witness file failed; its next checkpoint appends them");
                }
                // Switched; dropping the old database may fail (its server gone): the next
                // start drops it, as the catalog's move state says.
                match self.drop_tenant_database(from, &row).await {
                    Ok(()) => self.move_done(row.id).await?,
                    Err(err) => {
                        tracing::warn!(tenant.id = %row.id, error = %err, "the old database of a moved organisation could not be dropped yet; the next start drops it");
                    }
                }
                Ok(Moved {
                    from: from.as_str(),
                    to: region.as_str(),
                    arrived,
                })
            }
            Err(err) => {
                tracing::warn!(tenant.id = %row.id, error = %err, "a move or restore failed; the organisation stays as it was");
                if let Err(cleanup) = self.drop_tenant_database(region, &target).await {
                    tracing::error!(tenant.id = %row.id, error = %cleanup, "dropping a failed move's new database failed");
                }
                match self.fence(&row, false).await {
                    Ok(()) => self.move_done(row.id).await?,
                    Err(fence) => {
                        tracing::error!(tenant.id = %row.id, error = %fence, "reopening the old database after a failed move failed; the next start reopens it");
                    }
                }
                Err(err)
            }
        };
        let _ = tokio::fs::remove_file(&scratch_witness).await;
        lock.release().await;
        result
    }

    /// A move's or restore's copy: fence the old database, take its content from `source`
    /// (for a move, its archive written to `scratch`), create the new database and import
    /// into it.
    async fn copy_to(
        &self,
        row: &TenantRow,
        target: &TenantRow,
        region: Region,
        source: Source<'_>,
        scratch: &std::path::Path,
        witness: &std::path::Path,
    ) -> Result<Arrived, ArchiveError> {
        self.fence(row, true).await?;
        let (archive, opener) = match source {
            Source::Export => {
                // A key nothing derives: the archive never leaves this process's hands.
                let identity = age::x25519::Identity::generate();
                let (key, lock) = ArchiveKey::for_recipients(&[identity.to_public()])?;
                if let Some(dir) = scratch.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                let file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(scratch)
                    .await?;
                self.export_database(row, &key, lock, file).await?;
                (scratch, Opener::Identities(identity.to_string()))
            }
            Source::Archive { path, opener } => (path, opener),
        };
        self.create_tenant_database(region, target)
            .await
            .map_err(|e| ArchiveError::Other(e.into()))?;
        let file = tokio::fs::File::open(archive).await?;
        let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        let opened = Self::open_archive(&mut reader, opener).await?;
        if opened.header.organization.id != row.id {
            return Err(ArchiveError::Refused(format!(
                "the archive is of organisation {}, not of {} ({})",
                opened.header.organization.id, row.slug, row.id
            )));
        }
        let (imported, handover, loaded, rebuilt) = self
            .fill(&mut reader, &opened, target, witness, true)
            .await?;
        Ok(Arrived {
            row: target.clone(),
            imported,
            handover,
            loaded,
            rebuilt,
        })
    }

    /// Writes the archive of the organisation of `row` from its database, through a pool of
    /// its own (the organisation need not be open here, nor in service), carrying the signing
    /// key in force as it is: for a move's scratch file and for backup archives, which stay
    /// with the operator, who holds the master key that opens it anyway.
    pub(crate) async fn export_database<W: AsyncWrite + Unpin>(
        &self,
        row: &TenantRow,
        key: &ArchiveKey,
        lock: KeyLock,
        writer: W,
    ) -> Result<Exported, ArchiveError> {
        let master = self.master_key();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect_with(self.admin_options(row)?)
            .await?;
        let reading = Reading::new(&pool, master, row.id);
        let two_factor = two_factor_key(master, row.id);
        let audit_keys = row.audit_keys(master)?;
        let mut conn = pool.acquire().await?;
        let exported = export(
            &mut conn,
            self.organization_entry(row.id).await?,
            TenantSecrets {
                subject_keys: &reading.subject_keys,
                two_factor_key: &two_factor,
                audit_keys: &audit_keys,
            },
            key,
            lock,
            writer,
            None,
        )
        .await;
        drop(conn);
        pool.close().await;
        exported
    }

    /// Imports the archive at `path` into a scratch database on the server of its region
    /// (`scratch_database`, which must not exist), checking everything an import checks —
    /// manifest, chains, the Merkle log against every signed tree head, every sealed key
    /// opening — and drops it again: a backup archive's verification. The scratch tree heads
    /// go to `scratch_witness`, removed afterwards. Read models are not rebuilt.
    pub(crate) async fn trial_import(
        &self,
        path: &std::path::Path,
        passphrase: SecretString,
        scratch_database: &str,
        scratch_witness: &std::path::Path,
    ) -> Result<Imported, ArchiveError> {
        let file = tokio::fs::File::open(path).await?;
        let mut reader = tokio::io::BufReader::with_capacity(256 * 1024, file);
        let opened = Self::open_archive(&mut reader, Opener::Passphrase(passphrase)).await?;
        let organization = &opened.header.organization;
        let region: Region = organization
            .region
            .parse()
            .map_err(|()| ArchiveError::Malformed {
                line: 1,
                reason: format!("unknown region `{}`", organization.region),
            })?;
        let anchor = opened.header.audit_anchor.clone();
        let row = TenantRow {
            id: organization.id,
            slug: organization.slug.clone(),
            name: organization.name.clone(),
            region: region.as_str().to_owned(),
            status: "provisioning".to_owned(),
            database_name: scratch_database.to_owned(),
            role_name: scratch_database.to_owned(),
            audit_anchor_mac: Some(anchor_mac(self.master_key(), organization.id, &anchor)),
            audit_anchor: Some(anchor),
            storage_over_limit: false,
        };
        self.create_tenant_database(region, &row)
            .await
            .map_err(|e| ArchiveError::Other(e.into()))?;
        let filled = self
            .fill(&mut reader, &opened, &row, scratch_witness, false)
            .await;
        let dropped = self.drop_tenant_database(region, &row).await;
        let _ = tokio::fs::remove_file(scratch_witness).await;
        let (imported, ..) = filled?;
        dropped?;
        Ok(imported)
    }

    /// Reads an archive's header and opens its key with `opener`: a wrong passphrase or
    /// identity is told here, before anything is created.
    pub async fn open_archive<R: AsyncBufRead + Unpin>(
        reader: &mut R,
        opener: Opener,
    ) -> Result<OpenedArchive, ArchiveError> {
        let (header, line) = read_header(reader).await?;
        let lock = header.lock()?;
        let by_passphrase = matches!(lock, KeyLock::Passphrase(_));
        let key = unlock_key(lock, opener).await?;
        if !key.checks(header.organization.id, &header.key_check) {
            // A key age opened is the one it was given: what does not check was altered.
            return Err(if by_passphrase {
                ArchiveError::WrongPassphrase
            } else {
                ArchiveError::Altered("its key does not match its header".into())
            });
        }
        Ok(OpenedArchive { header, line, key })
    }

    /// Imports the archive `reader` is positioned after the header of (see
    /// [`Tenancy::open_archive`]) as a new organisation of this server.
    pub async fn import_archive<R: AsyncBufRead + Unpin>(
        &self,
        reader: &mut R,
        opened: OpenedArchive,
        placement: Placement,
        data_dir: &std::path::Path,
    ) -> Result<Arrived, ArchiveError> {
        let organization = &opened.header.organization;
        let slug = placement.slug.unwrap_or_else(|| organization.slug.clone());
        let region = match placement.region {
            Some(region) => region,
            None => organization
                .region
                .parse()
                .map_err(|()| ArchiveError::Malformed {
                    line: 1,
                    reason: format!("unknown region `{}`", organization.region),
                })?,
        };
        let anchor: [u8; 32] = opened
            .header
            .audit_anchor
            .as_slice()
            .try_into()
            .map_err(|_| ArchiveError::Malformed {
                line: 1,
                reason: "its audit anchor is not 32 bytes".into(),
            })?;
        // Held for the whole import: no other start removes it as an abandoned sign-up.
        let lock = self
            .organization_lock(organization.id)
            .await?
            .ok_or_else(|| {
                ArchiveError::Refused(format!(
                    "organisation {} is being imported or moved by another process",
                    organization.id
                ))
            })?;
        let row = self
            .begin_import(organization.id, &slug, &organization.name, region, &anchor)
            .await
            .map_err(|err| match err {
                ProvisionError::SlugTaken => ArchiveError::SlugTaken(slug.clone()),
                ProvisionError::IdTaken => ArchiveError::IdTaken(organization.id),
                ProvisionError::Purged => ArchiveError::Refused(format!(
                    "organisation {} was purged from this server: its id stays with its \
                     tombstone, and it cannot come back here under it",
                    organization.id
                )),
                ProvisionError::Database(e) => e.into(),
                ProvisionError::Migration(e) => ArchiveError::Other(e.into()),
                ProvisionError::Other(e) => ArchiveError::Other(e),
            })?;
        // The witness file gets the received heads and the hand-over; if the import fails it
        // is removed again — unless it was there before (the organisation lived here once).
        let witness = witness_file(data_dir, row.id);
        let existed = witness.exists();
        let arrived = self.fill(reader, &opened, &row, &witness, true).await;
        if arrived.is_err() && !existed {
            let _ = std::fs::remove_file(&witness);
        }
        let arrived = match arrived {
            Ok(filled) => self
                .finish_import(
                    row.id,
                    &organization.status,
                    &organization.plan,
                    organization.trial_ends_at,
                )
                .await
                .map(|()| filled)
                .map_err(ArchiveError::Other),
            Err(err) => Err(err),
        };
        let result = match arrived {
            Ok((imported, handover, loaded, rebuilt)) => {
                tracing::info!(tenant.id = %row.id, tenant.region = region.as_str(), events = imported.events, "organisation imported from an archive");
                Ok(Arrived {
                    row,
                    imported,
                    handover,
                    loaded,
                    rebuilt,
                })
            }
            Err(err) => {
                if let Err(cleanup) = self.remove(row.id).await {
                    tracing::error!(tenant.id = %row.id, error = %cleanup, "removing a failed import failed");
                }
                Err(err)
            }
        };
        lock.release().await;
        result
    }

    /// The import proper, into the new database of `row`.
    async fn fill<R: AsyncBufRead + Unpin>(
        &self,
        reader: &mut R,
        opened: &OpenedArchive,
        row: &TenantRow,
        witness: &std::path::Path,
        rebuild: bool,
    ) -> Result<(Imported, i64, std::time::Duration, std::time::Duration), ArchiveError> {
        let started = std::time::Instant::now();
        let id = row.id;
        let master = self.master_key();
        let audit_keys = row.audit_keys(master)?;
        let mut conn = self.admin_connection(row).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(self.admin_options(row)?.clone())
            .await?;
        let reading = Reading::new(&pool, master, id);
        let two_factor: SecretBox<[u8; 32]> = two_factor_key(master, id);
        let imported = import(
            reader,
            &opened.header,
            &opened.line,
            &opened.key,
            &mut conn,
            TenantSecrets {
                subject_keys: &reading.subject_keys,
                two_factor_key: &two_factor,
                audit_keys: &audit_keys,
            },
        )
        .await?;
        // This server witnesses the heads it received, then retires the key that travelled in
        // the archive: a hand-over head names a new key only this server holds.
        let file = witness;
        let since = last_tree_head(file)?.map_or(0, |h| h.number);
        let heads: Vec<_> = stored_heads(&mut conn, id)
            .await?
            .into_iter()
            .map(|s| s.head)
            .filter(|h| h.number > since)
            .collect();
        append_witness(file, &heads)?;
        let handover = match tree::checkpoint(&mut conn, id, &audit_keys, file, true).await? {
            Checkpointed::Signed(head) => head.number,
            Checkpointed::Nothing => {
                return Err(ArchiveError::Refused(
                    "the imported organisation's signing key could not be handed over".into(),
                ))
            }
            Checkpointed::Refused(alarm) => {
                return Err(ArchiveError::Refused(format!(
                    "the imported log does not agree with its last signed tree head: {}",
                    alarm.0
                )))
            }
        };
        // Its webhooks go on from here: what they were told on the other server is not told
        // again (the events' positions were renumbered on the way, so the messages would not
        // even keep their ids).
        // What the other server had not delivered yet when the organisation left is not
        // delivered here (docs/operations.md).
        let webhooks = sqlx::query(
            "INSERT INTO webhook_cursors (webhook_id, transaction_id, global_position)
             SELECT DISTINCT e.aggregate_id::uuid, last.transaction_id, last.global_position
             FROM events e,
                  (SELECT transaction_id, global_position FROM events
                   ORDER BY transaction_id DESC, global_position DESC LIMIT 1) AS last
             WHERE e.aggregate_type = 'webhook'
             ON CONFLICT (webhook_id) DO NOTHING",
        )
        .execute(&mut conn)
        .await?
        .rows_affected();
        if webhooks > 0 {
            sqlx::query("UPDATE tenants SET webhooks = true WHERE id = $1")
                .bind(id)
                .execute(self.catalog())
                .await?;
        }
        let loaded = started.elapsed();
        if rebuild {
            // The events were just written and PostgreSQL has no statistics of them yet;
            // without, it may plan a batch the fill reads as a scan and sort of every event
            // left (`EXPLAIN ANALYZE` on a never-analysed copy of 100,000 events: 0.4 s a
            // batch of 5,000, against 17 ms once analysed). Statistics only speed plans up:
            // failing to gather them does not fail the import.
            if let Err(err) = sqlx::query("ANALYZE events").execute(&mut conn).await {
                tracing::warn!(tenant.id = %id, error = %err, "analysing the imported events failed; reads are planned without statistics until autovacuum comes by");
            }
            fill_read_models(&pool, &reading.log, &reading.read_models).await?;
        }
        pool.close().await;
        conn.close().await?;
        Ok((imported, handover, loaded, started.elapsed() - loaded))
    }
}

/// Writes `tenant`'s archive so that no key that signs its history here leaves the server:
/// a hand-over first puts a fresh key in force, which the archive carries (the importing server
/// continues the organisation's key chain with it); as soon as the archive's snapshot is fixed,
/// another hand-over retires that key here. The key that signed every head the archive holds
/// — before the first hand-over — never leaves.
pub(crate) async fn write_archive<W: AsyncWrite + Unpin>(
    tenant: &Tenant,
    organization: OrganizationEntry,
    key: &ArchiveKey,
    lock: KeyLock,
    witness: &std::path::Path,
    writer: W,
) -> Result<Exported, ArchiveError> {
    hand_over(tenant, witness).await?;
    let (taken, snapshot) = tokio::sync::oneshot::channel();
    let mut conn = tenant.pool.acquire().await?;
    let secrets = TenantSecrets {
        subject_keys: &tenant.subject_keys,
        two_factor_key: &tenant.two_factor_key,
        audit_keys: &tenant.audit_keys,
    };
    let exporting = export(
        &mut conn,
        organization,
        secrets,
        key,
        lock,
        writer,
        Some(taken),
    );
    let retiring = async {
        match snapshot.await {
            Ok(()) => hand_over(tenant, witness).await.map(Some),
            Err(_) => Ok(None),
        }
    };
    let (exported, retired) = tokio::join!(exporting, retiring);
    retired?;
    exported
}

/// Signs a hand-over tree head of `tenant` to a new key (waiting up to ten seconds for a
/// checkpoint being signed meanwhile); refused when the log does not agree with its last head.
async fn hand_over(tenant: &Tenant, witness: &std::path::Path) -> Result<i64, ArchiveError> {
    match tree::hand_over(&tenant.pool, tenant.id, &tenant.audit_keys, witness).await? {
        Checkpointed::Signed(head) => Ok(head.number),
        Checkpointed::Refused(alarm) => Err(ArchiveError::Refused(format!(
            "the organisation's log does not agree with its last signed tree head, so no archive is written: {}",
            alarm.0
        ))),
        Checkpointed::Nothing => Err(ArchiveError::Refused(
            "another checkpoint kept the signing key busy; try again".into(),
        )),
    }
}

/// Starts the witness file `file` again from `fresh` (the heads of a restored database): the
/// one before is kept as `<file>.replaced-<time>`, the record of the history the restore
/// rolled back.
fn replace_witness(file: &std::path::Path, fresh: &std::path::Path) -> anyhow::Result<()> {
    set_aside_witness(file)?;
    crate::infra::erasure_ledger::copy_durably(fresh, file)?;
    Ok(())
}

/// Renames the witness file `file`, if there is one, to `<file>.replaced-<time>`: a restore
/// starts it again from the heads it brings back.
pub(crate) fn set_aside_witness(file: &std::path::Path) -> std::io::Result<()> {
    if file.exists() {
        let mut kept = file.as_os_str().to_owned();
        kept.push(format!(
            ".replaced-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        std::fs::rename(file, &kept)?;
    }
    Ok(())
}
