//! The `logins` read model: every login, failed login, logout, lock and unlock of users, and
//! every use and refusal of API tokens, for the login history administrators and users see.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use custos_domain::{
    ApiToken, ApiTokenEvent, LoginFailure, LoginOrigin, SecondFactor, TokenRefusal, User, UserEvent,
};
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

use crate::{AnyEvent, Page, ProjectedEvent, Projection};

/// Projects login-related User and ApiToken events into `logins`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginsProjection;

fn failure(reason: LoginFailure) -> &'static str {
    match reason {
        LoginFailure::WrongPassword => "wrong_password",
        LoginFailure::Deactivated => "deactivated",
        LoginFailure::Locked => "locked",
        LoginFailure::WrongSecondFactor => "wrong_second_factor",
        LoginFailure::OrganizationRestricted => "organization_restricted",
    }
}

fn refusal(reason: TokenRefusal) -> &'static str {
    match reason {
        TokenRefusal::Revoked => "revoked",
        TokenRefusal::Expired => "expired",
    }
}

fn method(second_factor: SecondFactor) -> &'static str {
    match second_factor {
        SecondFactor::Totp => "totp",
        SecondFactor::RecoveryCode => "recovery_code",
    }
}

/// What one event adds to the history.
#[derive(Default)]
struct Entry<'a> {
    event_type: String,
    reason: Option<&'static str>,
    session_id: Option<Uuid>,
    second_factor: Option<&'static str>,
    origin: Option<&'a LoginOrigin>,
}

fn user_entry(event: &UserEvent) -> Option<Entry<'_>> {
    let event_type = cqrs_es::DomainEvent::event_type(event);
    Some(match event {
        UserEvent::LoginSucceeded {
            session_id,
            origin,
            second_factor,
        } => Entry {
            event_type,
            session_id: Some(*session_id),
            second_factor: second_factor.map(method),
            origin: Some(origin),
            ..Entry::default()
        },
        UserEvent::LoginFailed { reason, origin, .. } => Entry {
            event_type,
            reason: Some(failure(*reason)),
            origin: Some(origin),
            ..Entry::default()
        },
        UserEvent::LoggedOut { session_id } => Entry {
            event_type,
            session_id: Some(*session_id),
            ..Entry::default()
        },
        UserEvent::LoginLocked { .. } | UserEvent::LoginUnlocked => Entry {
            event_type,
            ..Entry::default()
        },
        _ => return None,
    })
}

fn token_entry(event: &ApiTokenEvent) -> Option<Entry<'_>> {
    let event_type = cqrs_es::DomainEvent::event_type(event);
    Some(match event {
        ApiTokenEvent::ApiTokenUsed { origin } => Entry {
            event_type,
            origin: Some(origin),
            ..Entry::default()
        },
        ApiTokenEvent::ApiTokenRefused { reason, origin } => Entry {
            event_type,
            reason: Some(refusal(*reason)),
            origin: Some(origin),
            ..Entry::default()
        },
        _ => return None,
    })
}

#[async_trait]
impl Projection for LoginsProjection {
    fn name(&self) -> &'static str {
        "logins"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[
            <User as cqrs_es::Aggregate>::TYPE,
            <ApiToken as cqrs_es::Aggregate>::TYPE,
        ]
    }
    fn tables(&self) -> &'static [crate::Table] {
        // `logins_by_user` stays: an erasure blanks a user's logins through it.
        const { &[crate::Table::new("logins").read_indexes(&["logins_by_time", "logins_by_token"])] }
    }

    async fn apply(&self, conn: &mut PgConnection, event: &ProjectedEvent) -> sqlx::Result<()> {
        if let AnyEvent::User(UserEvent::UserErased) = &event.event {
            // The history keeps that logins happened; where from was the person's data.
            sqlx::query("UPDATE logins SET ip = NULL, user_agent = NULL WHERE user_id = $1")
                .bind(event.aggregate_id)
                .execute(conn)
                .await?;
            return Ok(());
        }
        let (entry, user, token) = match &event.event {
            AnyEvent::User(e) => (user_entry(e), Some(event.aggregate_id), None),
            AnyEvent::ApiToken(e) => (token_entry(e), None, Some(event.aggregate_id)),
            _ => (None, None, None),
        };
        let Some(entry) = entry else {
            return Ok(());
        };
        sqlx::query(
            "INSERT INTO logins (global_position, user_id, api_token_id, event_type, reason, session_id,
                                 second_factor, ip, user_agent, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (global_position) DO NOTHING",
        )
        .bind(event.global_position)
        .bind(user)
        .bind(token)
        .bind(entry.event_type)
        .bind(entry.reason)
        .bind(entry.session_id)
        .bind(entry.second_factor)
        .bind(entry.origin.and_then(|o| o.ip.clone()))
        .bind(entry.origin.and_then(|o| o.user_agent.clone()))
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
    /// The user who logged in, or whose login failed; `None` for API token entries.
    pub user_id: Option<Uuid>,
    pub api_token_id: Option<Uuid>,
    pub event_type: String,
    pub reason: Option<String>,
    pub session_id: Option<Uuid>,
    pub second_factor: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// Filters for [`history`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HistoryFilter {
    pub user: Option<Uuid>,
    pub api_token: Option<Uuid>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

fn push_filter(query: &mut QueryBuilder<'_, sqlx::Postgres>, filter: HistoryFilter) {
    query.push(" WHERE true");
    if let Some(user) = filter.user {
        query.push(" AND user_id = ").push_bind(user);
    }
    if let Some(token) = filter.api_token {
        query.push(" AND api_token_id = ").push_bind(token);
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
        "SELECT global_position, user_id, api_token_id, event_type, reason, session_id, second_factor,
                ip, user_agent, recorded_at FROM logins",
    );
    push_filter(&mut query, filter);
    if let Some(before) = before {
        query.push(" AND global_position < ").push_bind(before);
    }
    query
        .push(" ORDER BY global_position DESC LIMIT ")
        .push_bind(first + 1);
    let mut items: Vec<LoginRow> = query
        .build_query_as()
        .persistent(false)
        .fetch_all(&mut *db)
        .await?;
    let has_next_page = items.len() as i64 > first;
    items.truncate(first as usize);
    let mut count = QueryBuilder::new("SELECT count(*) FROM logins");
    push_filter(&mut count, filter);
    let total_count: i64 = count
        .build_query_scalar()
        .persistent(false)
        .fetch_one(&mut *db)
        .await?;
    Ok(Page {
        items,
        has_next_page,
        total_count,
    })
}
