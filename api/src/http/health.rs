//! Health (`/healthz`: the process serves; it also says when the database is down, names a
//! raised integrity alarm and, with backups configured, when the newest verified backup was
//! taken and whether WAL archiving fails) and readiness (`/readyz`: the database answers).
//! Each answers within a second, whatever the database does.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::state::AppState;
use crate::infra::backups::plan::BackupPlan;
use crate::service::Services;

/// The longest either endpoint waits for the database.
const WAIT: Duration = Duration::from_millis(900);

/// `ok` (always 200: the process serves; a dead private cluster is started again by the
/// service itself, which exits when it cannot), then a line while the database does not
/// answer (and one per region on a server of its own that does not), a line when a checkpoint
/// refused to sign for some organisation (details in the log and in its `verifyIntegrity`),
/// and with backups a line saying when the newest verified one was taken.
pub(crate) async fn healthz(State(state): State<AppState>) -> String {
    let mut text = "ok".to_owned();
    let database_up = state.services.database.is_up();
    if !database_up {
        text.push_str("\ndatabase: unavailable");
    }
    for (region, _, server) in state.services.tenancy.region_servers() {
        if !server.is_up() {
            text.push_str(&format!("\ndatabase ({}): unavailable", region.as_str()));
        }
    }
    match state.services.integrity_alarm_count() {
        0 => {}
        n => text.push_str(&format!("\nintegrity alarm: {n} organisation(s)")),
    }
    if let Some(coverage) = backup_coverage(&state.services, database_up).await {
        match coverage {
            Ok(coverage) => {
                let missing = coverage.missing;
                text.push_str(&last_verified(coverage.verified()));
                if missing > 0 && coverage.organizations > missing {
                    text.push_str(&format!(
                        " ({missing} of {} organisation(s) without a verified archive)",
                        coverage.organizations
                    ));
                }
            }
            Err(unknown) => text.push_str(&format!("\nlast verified backup: unknown ({unknown})")),
        }
    }
    // Base backups stream their own WAL and keep verifying while the archive fails.
    if let (Some(BackupPlan::Cluster(_)), true) = (state.services.backups.as_deref(), database_up) {
        let failing: Option<Option<chrono::DateTime<chrono::Utc>>> = tokio::time::timeout(
            WAIT,
            sqlx::query_scalar(
                "SELECT last_failed_time FROM pg_stat_archiver
                 WHERE last_failed_time > coalesce(last_archived_time, '-infinity')",
            )
            .fetch_optional(state.services.tenancy.catalog()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        if let Some(Some(since)) = failing {
            text.push_str(&format!(
                "\nWAL archiving failing: last failure {} (see postgres.log)",
                stamp(since)
            ));
        }
    }
    text
}

/// How far the verified backups reach: the newest verified one of the private cluster, or
/// for archives the oldest of every organisation's newest verified archive.
pub(super) struct BackupCoverage {
    /// The cluster's newest verified backup, or the weakest organisation's newest archive.
    newest: Option<chrono::DateTime<chrono::Utc>>,
    /// Organisations without a verified archive (0 for the cluster's backups).
    missing: usize,
    organizations: usize,
}

impl BackupCoverage {
    /// When every organisation's data was last in a verified backup (`None`: not all are).
    pub(super) fn verified(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        if self.missing > 0 {
            None
        } else {
            self.newest
        }
    }
}

/// The backups' coverage (`None` without a backup directory), or why it is unknown. Answers
/// within [`WAIT`].
pub(super) async fn backup_coverage(
    services: &Services,
    database_up: bool,
) -> Option<Result<BackupCoverage, &'static str>> {
    Some(match services.backups.as_deref()? {
        BackupPlan::Cluster(backups) => Ok(BackupCoverage {
            newest: backups.last_verified(),
            missing: 0,
            organizations: 1,
        }),
        BackupPlan::Archives(_) if !database_up => Err("the catalog does not answer"),
        BackupPlan::Archives(archives) => {
            match tokio::time::timeout(WAIT, archives.coverage(&services.tenancy)).await {
                Ok(Ok(coverage)) => Ok(BackupCoverage {
                    newest: coverage.iter().filter_map(|(_, at)| *at).min(),
                    missing: coverage.iter().filter(|(_, at)| at.is_none()).count(),
                    organizations: coverage.len(),
                }),
                Ok(Err(err)) => {
                    tracing::warn!(error = %format!("{err:#}"), "the backup archives could not be listed");
                    Err("the backup directory could not be read")
                }
                Err(_) => Err("the catalog did not answer in time"),
            }
        }
    })
}

fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The line naming when the newest verified backup was taken (with archives, the oldest
/// organisation's newest).
fn last_verified(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match at {
        Some(at) => format!("\nlast verified backup: {}", stamp(at)),
        None => "\nlast verified backup: none yet".to_owned(),
    }
}

/// 200 `ready` while the database answers, 503 `database unavailable` while it does not, as the
/// service's watcher last found (it asks the server four times a second on a connection of
/// its own): answered at once, and never refused because the pools are busy.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.services.database.is_up() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
    }
}
