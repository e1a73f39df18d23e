//! The whole organisation as a tenant archive, for its administrators: `exportOrganization`
//! derives the archive key from their passphrase (Argon2id) or makes a random one encrypted to
//! their age recipients, records an `OrganizationExported` event, and keeps the key — sealed
//! under a key derived from the master key, bound to the export — with a one-time link;
//! opening the link streams the archive from the database with that key (nothing of it is held
//! in memory or on disk), and the link's row, key included, is gone once used or expired.

use std::sync::Arc;

use custos_domain::DataExportCommand;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::links::{issue_link, stream, ExportTicket};
use crate::auth::principal::Principal;
use crate::error::ApiError;
use crate::infra::archive::format::{
    recipients, ArchiveKey, Kdf, KeyLock, OrganizationEntry, Protection,
};
use crate::infra::integrity::tree_head::witness_file;
use crate::infra::stores::downloads::NewDownload;
use crate::infra::subject_keys::{open, seal};
use crate::infra::tenancy::archives::{lock_key, write_archive};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// The binding of an archive key kept with its link.
fn binding(tenant: Uuid, export_id: Uuid) -> Vec<u8> {
    format!("custos/organization-archive-link/{tenant}/{export_id}").into_bytes()
}

impl Services {
    /// The key that seals archive keys kept with download links.
    fn link_key(&self, tenant: Uuid) -> [u8; 32] {
        self.tenancy
            .master_key()
            .derive(&format!("custos/archive-link-keys/{tenant}"))
    }

    /// Records the export of the whole organisation, its archive to be opened with
    /// `passphrase` or by `recipients` (exactly one of them), and hands out its link.
    pub(crate) async fn start_organization_export(
        &self,
        principal: &Principal,
        passphrase: Option<SecretString>,
        recipient_keys: Option<Vec<String>>,
        request_id: Uuid,
    ) -> Result<ExportTicket, ApiError> {
        let protection = match (passphrase, recipient_keys) {
            (Some(passphrase), None) => {
                let protection = Protection::Passphrase(passphrase);
                protection
                    .check()
                    .map_err(|weak| ApiError::validation("passphrase", weak.to_string()))?;
                protection
            }
            (None, Some(keys)) if !keys.is_empty() => Protection::Recipients(
                recipients(&keys).map_err(|reason| ApiError::validation("recipients", reason))?,
            ),
            (None, _) => {
                return Err(ApiError::validation(
                    "passphrase",
                    "give a passphrase, or the age recipients to encrypt the archive to",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "recipients",
                    "give a passphrase or recipients, not both",
                ))
            }
        };
        let tenant = &principal.tenant;
        // Links never opened keep their sealed archive key only until they expire.
        sqlx::query(
            "UPDATE export_downloads SET filter = NULL
             WHERE kind = 'organization' AND filter IS NOT NULL AND expires_at < now()",
        )
        .execute(&tenant.pool)
        .await?;
        // Told now, not as an empty download: without the signing key in force the archive
        // could not be continued anywhere.
        {
            let mut conn = tenant.pool.acquire().await?;
            if let Err(reason) = tenant
                .audit_keys
                .in_force(&mut conn)
                .await
                .map_err(ApiError::internal)?
            {
                return Err(ApiError::Conflict(format!(
                    "the organisation's signing key in force cannot be had: {reason}"
                )));
            }
        }
        let recipient_keys: Vec<String> = match &protection {
            Protection::Recipients(keys) => keys.iter().map(ToString::to_string).collect(),
            Protection::Passphrase(_) => Vec::new(),
        };
        let (key, lock) = lock_key(protection)
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))?;
        let subjects: i64 =
            sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE wrapped_key IS NOT NULL")
                .fetch_one(&tenant.pool)
                .await?;
        let records: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&tenant.pool)
            .await?;
        let export_id = Uuid::now_v7();
        let command = DataExportCommand::Organization {
            subjects: usize::try_from(subjects).unwrap_or_default(),
            recipients: recipient_keys,
        };
        self.record_export(principal, export_id, command, request_id)
            .await?;
        let sealed = seal(
            &self.link_key(tenant.id),
            &key.to_parts(),
            &binding(tenant.id, export_id),
        );
        let stored = json!({ "lock": lock, "key": hex::encode(sealed) });
        let link = NewDownload {
            filter: Some(&stored),
            actor: Some((principal.actor().id(), principal.actor().kind())),
            ..NewDownload::new("organization", export_id, "archive")
        };
        let ticket = issue_link(tenant, link, usize::try_from(records).unwrap_or_default()).await?;
        tracing::info!(tenant.id = %tenant.id, export.id = %export_id, "organisation archive export started");
        Ok(ticket)
    }

    /// The archive download of an opened `organization` link.
    pub(crate) async fn organization_download(
        &self,
        tenant: Arc<Tenant>,
        export_id: Uuid,
        stored: &serde_json::Value,
    ) -> Result<OrganizationDownload, ApiError> {
        let corrupt = || ApiError::internal(anyhow::anyhow!("an archive link is malformed"));
        // Links handed out before archives could be written to recipients keep `kdf`.
        let lock = match stored.get("lock") {
            Some(lock) => serde_json::from_value(lock.clone()),
            None => serde_json::from_value::<Kdf>(stored["kdf"].clone()).map(KeyLock::Passphrase),
        }
        .map_err(|_| corrupt())?;
        let sealed = stored["key"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(corrupt)?;
        let parts = open(
            &self.link_key(tenant.id),
            &sealed,
            &binding(tenant.id, export_id),
        )
        .ok_or_else(corrupt)?;
        let key = ArchiveKey::from_parts(&parts).ok_or_else(corrupt)?;
        let organization = self
            .tenancy
            .organization_entry(tenant.id)
            .await
            .map_err(|e| ApiError::internal(anyhow::anyhow!("{e}")))?;
        let witness = witness_file(&self.data_dir, tenant.id);
        Ok(OrganizationDownload {
            tenant,
            key,
            lock,
            organization,
            witness,
        })
    }
}

/// An organisation archive to stream.
pub(crate) struct OrganizationDownload {
    tenant: Arc<Tenant>,
    key: ArchiveKey,
    lock: KeyLock,
    organization: OrganizationEntry,
    /// The organisation's witness file (the export's key hand-overs are appended to it).
    witness: std::path::PathBuf,
}

impl OrganizationDownload {
    pub(crate) fn file_name(&self) -> String {
        format!(
            "{}-{}.custos-archive",
            self.organization.slug,
            chrono::Utc::now().format("%Y-%m-%d")
        )
    }

    /// The archive in chunks: written into one end of a pipe by the export, read from the
    /// other in 64 KiB chunks.
    pub(crate) fn stream(self) -> mpsc::Receiver<Vec<u8>> {
        let tenant_id = self.tenant.id;
        stream(
            tenant_id,
            "streaming an organisation archive failed",
            |sender| async move {
                let (writer, mut reader) = tokio::io::duplex(256 * 1024);
                let writing = async move {
                    let Self {
                        tenant,
                        key,
                        lock,
                        organization,
                        witness,
                    } = self;
                    write_archive(&tenant, organization, &key, lock, &witness, writer)
                        .await
                        .map_err(anyhow::Error::from)?;
                    Ok::<_, anyhow::Error>(())
                };
                let reading = async move {
                    loop {
                        let mut chunk = vec![0u8; 64 * 1024];
                        let n = reader.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok::<_, anyhow::Error>(());
                        }
                        chunk.truncate(n);
                        if sender.send(chunk).await.is_err() {
                            anyhow::bail!("the client went away");
                        }
                    }
                };
                let (written, read) = tokio::join!(writing, reading);
                written.and(read)
            },
        )
    }
}
