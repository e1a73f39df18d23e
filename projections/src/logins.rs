//! The `logins` read model: every login, failed login, logout, lock and unlock, for the login
//! history administrators and users see.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{LoginFailure, User, UserEvent};
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use crate::{AnyEvent, Page, ProjectedEvent, Projection};

/// Projects login-related User events into `logins`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginsProjection;

fn reason(failure: LoginFailure) -> &'static str {
    match failure {
        LoginFailure::WrongPassword => "wrong_password",
        LoginFailure::Deactivated => "deactivated",
        LoginFailure::Locked => "locked",
    }
}

#[async_trait]
impl Projection for LoginsProjection {
    fn name(&self) -> &'static str {
        "logins"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[<User as cqrs_es::Aggregate>::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        let AnyEvent::User(user_event) = &event.event else {
            return Ok(());
        };
        let (reason, session, origin) = match user_event {
            UserEvent::LoginSucceeded { session_id, origin } => {
                (None, Some(*session_id), Some(origin))
            }
            UserEvent::LoginFailed {
                reason: r, origin, ..
            } => (Some(reason(*r)), None, Some(origin)),
            UserEvent::LoggedOut { session_id } => (None, Some(*session_id), None),
            UserEvent::LoginLocked { .. } | UserEvent::LoginUnlocked => (None, None, None),
            _ => return Ok(()),
        };
        let event_type = cqrs_es::DomainEvent::event_type(user_event);
        sqlx::query(
            "INSERT INTO logins (global_position, user_id, event_type, reason, session_id, ip, user_agent, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(event.global_position)
        .bind(event.aggregate_id)
        .bind(event_type)
        .bind(reason)
        .bind(session)
        .bind(origin.and_then(|o| o.ip.clone()))
        .bind(origin.and_then(|o| o.user_agent.clone()))
        .bind(event.recorded_at)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM logins").execute(conn).await?;
        Ok(())
    }
}

/// One entry of the login history.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LoginRow {
    pub global_position: i64,
    pub user_id: Uuid,
    pub event_type: String,
    pub reason: Option<String>,
    pub session_id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// Filters for [`history`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryFilter {
    pub user: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

fn push_filter(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: HistoryFilter) {
    query.push(" WHERE true");
    if let Some(user) = filter.user {
        query.push(" AND user_id = ").push_bind(user);
    }
    if let Some(from) = filter.from {
        query.push(" AND recorded_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        query.push(" AND recorded_at < ").push_bind(to);
    }
}

/// Newest first; `before` is the position of the last entry of the previous page.
pub async fn history(
    db: &mut PgConnection,
    filter: HistoryFilter,
    first: i64,
    before: Option<i64>,
) -> sqlx::Result<Page<LoginRow>> {
    let first = first.clamp(1, crate::page::MAX_PAGE);
    let mut query = QueryBuilder::new(
        "SELECT global_position, user_id, event_type, reason, session_id, ip, user_agent, recorded_at FROM logins",
    );
    push_filter(&mut query, filter);
    if let Some(before) = before {
        query.push(" AND global_position < ").push_bind(before);
    }
    query
        .push(" ORDER BY global_position DESC LIMIT ")
        .push_bind(first + 1);
    let mut items: Vec<LoginRow> = query.build_query_as().fetch_all(&mut *db).await?;
    let has_next_page = items.len() as i64 > first;
    items.truncate(first as usize);
    let mut count = QueryBuilder::new("SELECT count(*) FROM logins");
    push_filter(&mut count, filter);
    let total_count: i64 = count.build_query_scalar().fetch_one(&mut *db).await?;
    Ok(Page {
        items,
        has_next_page,
        total_count,
    })
}
