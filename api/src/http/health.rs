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

/// The longest either endpoint waits for the database.
const WAIT: Duration = Duration::from_millis(900);

/// `ok` (always 200: the process serves; a dead private cluster is started again by the
/// service itself, which exits when it cannot), then a line while the database does not
/// answer, a line when a checkpoint refused to sign for some organisation (details in the log
/// and in its `verifyIntegrity`), and with backups a line saying when the newest verified one
/// was taken.
pub(crate) async fn healthz(State(state): State<AppState>) -> String {
    let mut text = "ok".to_owned();
    let database_up = state.services.database.is_up();
    if !database_up {
        text.push_str("\ndatabase: unavailable");
    }
    match state.services.integrity_alarm_count() {
        0 => {}
        n => text.push_str(&format!("\nintegrity alarm: {n} organisation(s)")),
    }
    match state.services.backups.as_deref() {
        Some(BackupPlan::Cluster(backups)) => {
            text.push_str(&last_verified(backups.last_verified()));
            // Base backups stream their own WAL and keep verifying while the archive fails.
            let failing: Option<Option<chrono::DateTime<chrono::Utc>>> = if database_up {
                tokio::time::timeout(
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
                .flatten()
            } else {
                None
            };
            if let Some(Some(since)) = failing {
                text.push_str(&format!(
                    "\nWAL archiving failing: last failure {} (see postgres.log)",
                    stamp(since)
                ));
            }
        }
        Some(BackupPlan::Archives(archives)) => {
            // The weakest organisation: the oldest of every organisation's newest verified
            // archive, and how many have none.
            let coverage = if database_up {
                tokio::time::timeout(WAIT, archives.coverage(&state.services.tenancy))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the catalog did not answer in time")))
            } else {
                Err(anyhow::anyhow!("the database is unavailable"))
            };
            match coverage {
                Ok(coverage) => {
                    let missing = coverage.iter().filter(|(_, at)| at.is_none()).count();
                    let oldest = coverage.iter().filter_map(|(_, at)| *at).min();
                    text.push_str(&last_verified(if missing > 0 { None } else { oldest }));
                    if missing > 0 && coverage.len() > missing {
                        text.push_str(&format!(
                            " ({missing} of {} organisation(s) without a verified archive)",
                            coverage.len()
                        ));
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %format!("{err:#}"), "the backup archives could not be listed");
                    text.push_str(if database_up {
                        "\nlast verified backup: unknown (the backup directory could not be read)"
                    } else {
                        "\nlast verified backup: unknown (the catalog does not answer)"
                    });
                }
            }
        }
        None => {}
    }
    text
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
