//! Authentication: password hashing (argon2id in a capped blocking pool), bearer tokens and
//! sessions, and the principal a request acts as.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use custos_domain::{Actor, Datasheet, Grant, Grants, Permission};
use custos_projections::api_tokens::{ApiTokenRow, TOKEN_COLUMNS};
use custos_projections::users::UserRow;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::SessionPolicy;
use crate::error::ApiError;
use crate::tenancy::Tenant;

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The shortest and longest passwords accepted. Long passphrases are welcome; the upper
/// bound only keeps one request from buying unbounded hashing work.
pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 1024;

/// How many characters the strength estimator looks at: its cost grows with length, and a
/// password this long is not weak for its length. The hash always covers the whole password.
const ESTIMATED_PREFIX: usize = 256;

/// Checks a new password against the policy (OWASP ASVS 5: 12 to 1024 characters, never
/// truncated, not guessable): zxcvbn must rate it at least 3 of 4, counting the user's own
/// email, name and organisation (`context`) as guessable words. The error names the rule and
/// zxcvbn's warning, never the password.
pub fn check_new_password(password: &SecretString, context: &[&str]) -> Result<(), ApiError> {
    let length = password.expose_secret().chars().count();
    if length < MIN_PASSWORD {
        return Err(ApiError::validation(
            "password",
            format!("the password must have at least {MIN_PASSWORD} characters"),
        ));
    }
    if length > MAX_PASSWORD {
        return Err(ApiError::validation(
            "password",
            format!("the password must have at most {MAX_PASSWORD} characters"),
        ));
    }
    let prefix: String = password
        .expose_secret()
        .chars()
        .take(ESTIMATED_PREFIX)
        .collect();
    let estimate = zxcvbn::zxcvbn(&prefix, context);
    if estimate.score() < zxcvbn::Score::Three {
        let why = estimate
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        return Err(ApiError::validation(
            "password",
            format!(
                "the password is too easy to guess{why}; a few unrelated words make a strong one"
            ),
        ));
    }
    Ok(())
}

/// Hashes and verifies passwords on the blocking pool, at most `concurrency` at once, so a
/// login flood queues here instead of starving the async workers.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that answer takes as long as a
    /// wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new(concurrency: usize) -> Self {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let dummy = argon2()
            .hash_password(b"custos-dummy-password", &salt)
            .expect("hashing a constant succeeds")
            .to_string();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy.into(),
        }
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            argon2()
                .hash_password(password.expose_secret().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|err| ApiError::internal(anyhow::anyhow!("hashing failed: {err}")))
        })
        .await
        .map_err(ApiError::internal)?
    }

    /// Whether `password` matches `hash`; with no hash, spends the same time and says no.
    pub async fn verify(
        &self,
        hash: Option<String>,
        password: SecretString,
    ) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| {
                    argon2()
                        .verify_password(password.expose_secret().as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(ApiError::internal)?;
        Ok(known && matched)
    }
}

/// What a bearer-style token stands for; its prefix says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A session, from a login (`cus_`).
    Session,
    /// An integration's API token (`cua_`).
    ApiToken,
    /// A login waiting for its second factor (`cuc_`); it authenticates nothing by itself.
    LoginChallenge,
    /// A one-time export download link (`cud_`).
    Download,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "cus_",
            TokenKind::ApiToken => "cua_",
            TokenKind::LoginChallenge => "cuc_",
            TokenKind::Download => "cud_",
        }
    }
}

/// A token: `<prefix><tenant id>_<32 random bytes, base64url>`. The tenant id lets the token
/// alone find the tenant; only a SHA-256 of the whole token is stored.
pub struct BearerToken {
    pub kind: TokenKind,
    pub tenant_id: Uuid,
    pub hash: Vec<u8>,
}

impl BearerToken {
    /// A new token of `kind` for `tenant_id`: the secret to hand out once, and what to store.
    pub fn generate(kind: TokenKind, tenant_id: Uuid) -> (SecretString, Self) {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!(
            "{}{}_{}",
            kind.prefix(),
            tenant_id.simple(),
            URL_SAFE_NO_PAD.encode(secret)
        );
        let hash = Sha256::digest(token.as_bytes()).to_vec();
        (
            SecretString::from(token),
            Self {
                kind,
                tenant_id,
                hash,
            },
        )
    }

    /// Reads a presented token; `None` when it is not shaped like one of ours.
    pub fn parse(token: &str) -> Option<Self> {
        let kind = [
            TokenKind::Session,
            TokenKind::ApiToken,
            TokenKind::LoginChallenge,
            TokenKind::Download,
        ]
        .into_iter()
        .find(|kind| token.starts_with(kind.prefix()))?;
        let (tenant, secret) = token[kind.prefix().len()..].split_once('_')?;
        let tenant_id = Uuid::try_parse(tenant).ok()?;
        let decoded = URL_SAFE_NO_PAD.decode(secret).ok()?;
        if decoded.len() != 32 {
            return None;
        }
        Some(Self {
            kind,
            tenant_id,
            hash: Sha256::digest(token.as_bytes()).to_vec(),
        })
    }
}

/// Grants from their `datasheet/permission` text form; unknown pairs are left out.
fn parse_grants(pairs: &[String]) -> Grants {
    pairs
        .iter()
        .filter_map(|pair| {
            let (datasheet, permission) = pair.split_once('/')?;
            Some(Grant::new(
                Datasheet::parse(datasheet)?,
                Permission::parse(permission)?,
            ))
        })
        .collect()
}

/// What [`api_token`] finds for a presented API token.
pub struct PresentedApiToken {
    pub token: ApiTokenRow,
    /// The grants of the token's role (none if the role was deleted).
    pub grants: Grants,
    /// Whether a use was recorded within the last minute.
    pub recently_used: bool,
    /// Whether a refusal was recorded within the last minute.
    pub recently_refused: bool,
}

/// The API token with this hash, live or not, with its role's grants.
pub async fn api_token(
    pool: &PgPool,
    token_hash: &[u8],
) -> sqlx::Result<Option<PresentedApiToken>> {
    #[derive(sqlx::FromRow)]
    struct Found {
        grants: Vec<String>,
        recently_used: bool,
        recently_refused: bool,
        #[sqlx(flatten)]
        token: ApiTokenRow,
    }
    let found: Option<Found> = sqlx::query_as(&format!(
        "SELECT {TOKEN_COLUMNS},
                coalesce(last_used_at > now() - interval '1 minute', false) AS recently_used,
                coalesce(last_refused_at > now() - interval '1 minute', false) AS recently_refused,
                ARRAY(SELECT g.datasheet || '/' || g.permission
                      FROM role_grants g JOIN roles r ON r.id = g.role_id
                      WHERE g.role_id = t.role_id AND NOT r.deleted) AS grants
         FROM api_tokens t WHERE token_hash = $1"
    ))
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(found.map(|found| PresentedApiToken {
        grants: parse_grants(&found.grants),
        recently_used: found.recently_used,
        recently_refused: found.recently_refused,
        token: found.token,
    }))
}

/// Sessions in a tenant database.
pub mod sessions {
    use super::*;

    /// Stores a new session and returns its expiry.
    pub async fn create(
        pool: &PgPool,
        session_id: Uuid,
        user_id: Uuid,
        token: &BearerToken,
        policy: SessionPolicy,
    ) -> sqlx::Result<DateTime<Utc>> {
        sqlx::query_scalar(
            "INSERT INTO sessions (token_hash, id, user_id, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 second') RETURNING expires_at",
        )
        .bind(&token.hash)
        .bind(session_id)
        .bind(user_id)
        .bind(policy.absolute_lifetime.as_secs_f64())
        .fetch_one(pool)
        .await
    }

    /// How stale a session's last use may get before a request refreshes it: a minute, or half
    /// the idle timeout if that is shorter, so an active session never idles out while the
    /// refresh saves a write on most requests.
    pub fn refresh_after(policy: SessionPolicy) -> std::time::Duration {
        (policy.idle_timeout / 2).min(std::time::Duration::from_secs(60))
    }

    /// What [`authenticate`] finds for a live session.
    pub struct LiveSession {
        pub session_id: Uuid,
        pub user: UserRow,
        pub grants: Grants,
        /// Whether the organisation requires a second factor.
        pub two_factor_required: bool,
    }

    /// The live session for a token hash, with its user: not revoked, not past its absolute
    /// expiry, used within the idle timeout. Refreshes its last use (see [`refresh_after`]).
    pub async fn authenticate(
        pool: &PgPool,
        token_hash: &[u8],
        policy: SessionPolicy,
    ) -> sqlx::Result<Option<LiveSession>> {
        #[derive(sqlx::FromRow)]
        struct Live {
            session_id: Uuid,
            stale: bool,
            /// `datasheet/permission` pairs of the user's roles, in the same round trip.
            grants: Vec<String>,
            two_factor_required: bool,
            #[sqlx(flatten)]
            user: UserRow,
        }
        let live: Option<Live> = sqlx::query_as(
            "SELECT s.id AS session_id, s.last_seen_at < now() - $3 * interval '1 second' AS stale,
                    u.id, u.version, u.email, u.name, u.is_admin, u.active, u.roles, u.must_change_password,
                    u.two_factor, u.created_at, u.updated_at,
                    ARRAY(SELECT DISTINCT g.datasheet || '/' || g.permission
                          FROM role_grants g JOIN roles r ON r.id = g.role_id
                          WHERE g.role_id = ANY(u.roles) AND NOT r.deleted) AS grants,
                    (SELECT two_factor_required FROM organization_settings) AS two_factor_required
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now()
               AND s.last_seen_at > now() - $2 * interval '1 second'",
        )
        .bind(token_hash)
        .bind(policy.idle_timeout.as_secs_f64())
        .bind(refresh_after(policy).as_secs_f64())
        .fetch_optional(pool)
        .await?;
        let Some(live) = live else {
            return Ok(None);
        };
        if live.stale {
            sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1")
                .bind(live.session_id)
                .execute(pool)
                .await?;
        }
        Ok(Some(LiveSession {
            session_id: live.session_id,
            user: live.user,
            grants: parse_grants(&live.grants),
            two_factor_required: live.two_factor_required,
        }))
    }

    /// A live session as administrators and its user see it (never the token).
    #[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
    pub struct SessionRow {
        pub id: Uuid,
        pub user_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub last_seen_at: DateTime<Utc>,
        pub expires_at: DateTime<Utc>,
    }

    /// The live sessions of a user, newest first.
    pub async fn live(
        pool: &PgPool,
        user_id: Uuid,
        policy: SessionPolicy,
    ) -> sqlx::Result<Vec<SessionRow>> {
        sqlx::query_as(
            "SELECT id, user_id, created_at, last_seen_at, expires_at FROM sessions
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now()
               AND last_seen_at > now() - $2 * interval '1 second'
             ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(policy.idle_timeout.as_secs_f64())
        .fetch_all(pool)
        .await
    }

    /// The session with this id, live or not.
    pub async fn find(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<SessionRow>> {
        sqlx::query_as(
            "SELECT id, user_id, created_at, last_seen_at, expires_at FROM sessions WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
    }

    /// Ends every session of a user, except `keep`.
    pub async fn revoke_all(pool: &PgPool, user_id: Uuid, keep: Option<Uuid>) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE sessions SET revoked_at = now()
             WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)",
        )
        .bind(user_id)
        .bind(keep)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Ends a session.
    pub async fn revoke(pool: &PgPool, session_id: Uuid) -> sqlx::Result<()> {
        sqlx::query("UPDATE sessions SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
            .bind(session_id)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Who a request acts as, within one tenant.
#[derive(Clone)]
pub struct Principal {
    pub tenant: Arc<Tenant>,
    pub subject: Subject,
    /// The grants of the user's roles (administrators hold every permission anyway) or of the
    /// API token's role.
    pub grants: Grants,
    /// Whether the organisation requires users to log in with a second factor.
    pub two_factor_required: bool,
}

/// The user or integration behind a principal.
#[derive(Clone)]
pub enum Subject {
    /// A user, through one session.
    User { user: UserRow, session_id: Uuid },
    /// An integration, through an API token: never an administrator, never a user.
    ApiToken(ApiTokenRow),
}

impl Principal {
    /// Who events caused by this principal are attributed to.
    pub fn actor(&self) -> Actor {
        match &self.subject {
            Subject::User { user, .. } => Actor::User(user.id),
            Subject::ApiToken(token) => Actor::ApiToken(token.id),
        }
    }

    /// The signed-in user; API tokens may not use what needs one.
    pub fn user(&self) -> Result<&UserRow, ApiError> {
        match &self.subject {
            Subject::User { user, .. } => Ok(user),
            Subject::ApiToken(_) => Err(ApiError::Forbidden),
        }
    }

    /// The session the request came with, for users.
    pub fn session_id(&self) -> Option<Uuid> {
        match &self.subject {
            Subject::User { session_id, .. } => Some(*session_id),
            Subject::ApiToken(_) => None,
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(&self.subject, Subject::User { user, .. } if user.is_admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_carry_their_tenant() {
        let tenant = Uuid::now_v7();
        for kind in [
            TokenKind::Session,
            TokenKind::ApiToken,
            TokenKind::LoginChallenge,
        ] {
            let (secret, stored) = BearerToken::generate(kind, tenant);
            let parsed = BearerToken::parse(secret.expose_secret()).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.tenant_id, tenant);
            assert_eq!(parsed.hash, stored.hash);
            assert!(secret.expose_secret().len() > 43 + 32);
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let tenant = Uuid::now_v7().simple();
        for bad in [
            "",
            "Bearer x",
            "cus_",
            "cus_nothex_AAAA",
            &format!("cus_{tenant}_short"),
            &format!("cus_{tenant}"),
            &format!("cux_{tenant}_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        ] {
            assert!(BearerToken::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_password_policy_counts_characters() {
        let check = |p: &str| {
            check_new_password(
                &SecretString::from(p.to_owned()),
                &["ada@acme.example", "Acme"],
            )
        };
        assert!(check("short").is_err());
        assert!(check("ééééééééééé").is_err());
        assert!(check(&"x".repeat(MAX_PASSWORD + 1)).is_err());
        assert!(check("correct horse battery staple").is_ok());
        let long: String = (0..)
            .map(|i| format!("w{}x{} ", i * 7919 % 1000, i))
            .scan(String::new(), |acc, word| {
                acc.push_str(&word);
                (acc.len() <= MAX_PASSWORD).then(|| acc.clone())
            })
            .last()
            .unwrap();
        assert!(long.len() > 1000, "{}", long.len());
        assert!(check(&long).is_ok(), "long passphrases are accepted whole");
        for guessable in [
            "password1234",
            "123456789012",
            "qwertyuiopas",
            "ada@acme.example",
            "aaaaaaaaaaaaaaaa",
        ] {
            assert!(check(guessable).is_err(), "{guessable}");
        }
    }

    #[tokio::test]
    async fn passwords_verify_and_unknown_users_fail() {
        let passwords = Passwords::new(2);
        let hash = passwords
            .hash(SecretString::from("correct horse battery"))
            .await
            .unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(passwords
            .verify(
                Some(hash.clone()),
                SecretString::from("correct horse battery")
            )
            .await
            .unwrap());
        assert!(!passwords
            .verify(Some(hash), SecretString::from("wrong horse battery"))
            .await
            .unwrap());
        assert!(!passwords
            .verify(None, SecretString::from("custos-dummy-password"))
            .await
            .unwrap());
    }
}
