//! Identity: signing up an organisation, logging in and out, sessions, and authenticating a
//! bearer token (a session's or an API token's) as a principal.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use custos_domain::{
    Actor, Datasheet, Email, EventMetadata, Grant, Grants, LoginFailure, LoginOrigin, Permission,
    PersonName, SecondFactor, UserCommand, UserError,
};
use custos_projections::users::{self, UserRow};
use secrecy::SecretString;
use uuid::Uuid;

use crate::auth::passwords::check_new_password;
use crate::auth::policy::check_sign_in;
use crate::auth::principal::{Principal, Subject};
use crate::auth::tokens::{BearerToken, TokenKind};
use crate::config::Region;
use crate::error::{redacted, ApiError, Problems};
use crate::infra::database::{went_down, Health};
use crate::infra::stores::sessions;
use crate::infra::tenancy::catalog::ProvisionError;
use crate::infra::tenancy::tenant::Tenant;
use crate::service::Services;

/// What creating an organisation needs.
pub struct NewOrganization {
    pub name: String,
    pub slug: String,
    pub region: String,
    pub admin_email: String,
    pub admin_name: String,
    pub password: SecretString,
}

/// A successful sign-up or login: the bearer token (shown once) and who it belongs to.
pub(crate) struct SignedIn {
    pub(crate) token: SecretString,
    pub(crate) tenant: Arc<Tenant>,
    pub(crate) user: UserRow,
}

/// What a correct password leads to.
pub(crate) enum LoginOutcome {
    /// A session: the user has no second factor.
    SignedIn(SignedIn),
    /// The user must complete the login with a TOTP or recovery code.
    SecondFactorRequired {
        /// Shown once; pass it to `completeLogin`.
        challenge: SecretString,
        expires_at: DateTime<Utc>,
    },
}

/// Where a request came from; recorded with login events.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOrigin {
    pub(crate) request_id: Uuid,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
}

impl RequestOrigin {
    pub(crate) fn login_origin(&self) -> LoginOrigin {
        LoginOrigin::new(self.ip.clone(), self.user_agent.clone())
    }
}

/// The roles every new organisation starts with; administrators may change or delete them:
/// an HR manager may do everything with employees and job applicants, a Viewer may read every
/// datasheet.
fn seeded_roles() -> [(&'static str, Grants); 2] {
    let grants = |sheets: &[Datasheet], permissions: &[Permission]| -> Grants {
        sheets
            .iter()
            .flat_map(|d| permissions.iter().map(|p| Grant::new(*d, *p)))
            .collect()
    };
    [
        (
            "HR manager",
            grants(
                &[Datasheet::Employees, Datasheet::Applicants],
                &Permission::ALL,
            ),
        ),
        ("Viewer", grants(&Datasheet::ALL, &[Permission::Read])),
    ]
}

/// A slug: 3 to 63 lower-case letters, digits and inner dashes (it appears in login forms).
fn check_slug(slug: &str) -> Result<(), ApiError> {
    let ok = (3..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(
            "slug",
            "the slug must be 3 to 63 lower-case letters, digits or dashes, not starting or ending with a dash",
        ))
    }
}

impl Services {
    /// Creates an organisation: its own database, and its first administrator. Everything is
    /// validated before anything is created; on a later failure the tenant is removed again.
    pub async fn create_organization(
        &self,
        input: NewOrganization,
        request_id: Uuid,
    ) -> Result<(Arc<Tenant>, UserRow), ApiError> {
        // Every problem of the form at once.
        let mut problems = Problems::default();
        let name = input.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            problems.add(
                "organization",
                "the organisation name must have 1 to 200 characters",
            );
        }
        problems.check(check_slug(&input.slug))?;
        let region = problems.check(
            input
                .region
                .parse::<Region>()
                .map_err(|()| ApiError::validation("region", "the region must be `eu` or `us`")),
        )?;
        let email = problems.check(
            Email::parse(&input.admin_email)
                .map_err(|e| ApiError::validation("adminEmail", format!("adminEmail {e}"))),
        )?;
        let admin_name = problems.check(
            PersonName::parse(&input.admin_name)
                .map_err(|e| ApiError::validation("adminName", format!("adminName {e}"))),
        )?;
        problems.check(check_new_password(
            "password",
            &input.password,
            &[&input.admin_email, &input.admin_name, name, &input.slug],
        ))?;
        problems.done()?;
        let (Some(region), Some(email), Some(admin_name)) = (region, email, admin_name) else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a sign-up check failed without a problem"
            )));
        };
        let password_hash = self.passwords.hash(input.password).await?;

        let row = self
            .tenancy
            .provision(
                &input.slug,
                name,
                region,
                trial_ends_at(self.lifecycle.trial),
            )
            .await
            .map_err(|err| match err {
                ProvisionError::SlugTaken => {
                    ApiError::validation("slug", "this slug is already taken")
                }
                other => ApiError::internal(other),
            })?;
        let created = async {
            let tenant = self.tenancy.get(row.id).await?.ok_or(ApiError::NotFound)?;
            let user_id = Uuid::now_v7();
            let register = UserCommand::Register {
                email: email.to_string(),
                name: admin_name.to_string(),
                password_hash,
                administrator: true,
                roles: Default::default(),
                must_change_password: false,
            };
            let metadata = EventMetadata::new(Actor::User(user_id), request_id);
            self.command(&tenant, &tenant.users, user_id, register, metadata)
                .await?;
            for (name, grants) in seeded_roles() {
                self.create_role_as(&tenant, name, grants, metadata).await?;
            }
            let user = users::user(&tenant.pool, user_id)
                .await?
                .ok_or(ApiError::NotFound)?;
            Ok::<_, ApiError>((tenant, user))
        }
        .await;
        if created.is_err() {
            if let Err(err) = self.tenancy.remove(row.id).await {
                tracing::error!(tenant.id = %row.id, error = %err, "removing a half-created tenant failed");
            }
        }
        created
    }

    /// Signs up: creates the organisation and logs its administrator in.
    pub(crate) async fn sign_up(
        &self,
        input: NewOrganization,
        origin: &RequestOrigin,
    ) -> Result<SignedIn, ApiError> {
        let (tenant, user) = self.create_organization(input, origin.request_id).await?;
        self.open_session(tenant, user, origin, None, None).await
    }

    /// Records the login on the user's stream — where the aggregate may still refuse it — and
    /// only then creates the session.
    pub(crate) async fn open_session(
        &self,
        tenant: Arc<Tenant>,
        user: UserRow,
        origin: &RequestOrigin,
        verified_hash: Option<String>,
        second_factor: Option<SecondFactor>,
    ) -> Result<SignedIn, ApiError> {
        check_sign_in(tenant.standing(), user.is_admin)?;
        let (token, stored) = BearerToken::generate(TokenKind::Session, tenant.id);
        let session_id = Uuid::now_v7();
        let at = chrono::Utc::now();
        let command = UserCommand::RecordLoginSuccess {
            session_id,
            origin: origin.login_origin(),
            at,
            verified_hash,
            second_factor,
        };
        // Waits for the read models: the login is in the history the client may ask for next.
        match self
            .record_login(&tenant, user.id, command, origin.request_id, true)
            .await?
        {
            Ok(()) => {}
            Err(UserError::LoginRefused(reason)) => {
                self.record_failure(&tenant, user.id, reason, origin, at)
                    .await;
                return Err(ApiError::InvalidCredentials);
            }
            Err(refusal) => return Err(refusal.into()),
        }
        sessions::create(
            &tenant.pool,
            session_id,
            user.id,
            &stored.hash,
            self.sessions,
        )
        .await?;
        tracing::info!(tenant.id = %tenant.id, user.id = %user.id, session.id = %session_id, "login succeeded");
        self.metrics.logins.with_label_values(&["signed_in"]).inc();
        Ok(SignedIn {
            token,
            tenant,
            user,
        })
    }

    /// Logs in with the organisation's slug, an email and a password. Every failure — unknown
    /// organisation, unknown email, wrong password — gives the same error after the same work.
    /// A user with a second factor gets a challenge to complete with [`Self::complete_login`].
    pub(crate) async fn login(
        &self,
        slug: &str,
        email: &str,
        password: SecretString,
        origin: &RequestOrigin,
    ) -> Result<LoginOutcome, ApiError> {
        let tenant = match check_slug(slug) {
            Ok(()) => self
                .tenancy
                .by_slug(slug)
                .await
                .map_err(ApiError::internal)?,
            Err(_) => None,
        };
        // On a region's server of its own, an outage of that server ends the login at once
        // (requests with a token are ended so by the HTTP layer).
        let own_server = tenant
            .as_ref()
            .and_then(|tenant| self.own_server(tenant.server.clone()));
        let outcome = tokio::select! {
            outcome = self.check_login(tenant, email, password, origin) => outcome,
            () = went_down(own_server.as_deref()) => return Err(ApiError::Unavailable),
        };
        match (outcome, own_server) {
            (Err(ApiError::Internal(cause)), Some(server))
                if server.down_within_a_probe().await =>
            {
                tracing::warn!(error = %redacted(&cause), "a login met the outage of its organisation's server");
                Err(ApiError::Unavailable)
            }
            (outcome, _) => outcome,
        }
    }

    /// [`Self::login`] once the organisation is known (`None`: there is none of that slug).
    async fn check_login(
        &self,
        tenant: Option<Arc<Tenant>>,
        email: &str,
        password: SecretString,
        origin: &RequestOrigin,
    ) -> Result<LoginOutcome, ApiError> {
        let credentials = match &tenant {
            Some(tenant) => users::credentials(&tenant.pool, &email.trim().to_lowercase()).await?,
            None => None,
        };
        self.limit_attempts(origin)?;
        let now = chrono::Utc::now();
        // A locked account's password is not checked: the dummy hash spends the same time.
        let locked = credentials
            .as_ref()
            .is_some_and(|c| c.locked_until.is_some_and(|until| until > now));
        let hash = credentials
            .as_ref()
            .filter(|_| !locked)
            .map(|c| c.password_hash.clone());
        let matched = self.passwords.verify(hash, password).await?;
        match (tenant, credentials) {
            (Some(tenant), Some(credentials)) if !locked && matched && credentials.active => {
                let user = users::user(&tenant.pool, credentials.id)
                    .await?
                    .ok_or(ApiError::InvalidCredentials)?;
                if let Err(refused) = check_sign_in(tenant.standing(), user.is_admin) {
                    let reason = LoginFailure::OrganizationRestricted;
                    self.record_failure(&tenant, credentials.id, reason, origin, now)
                        .await;
                    return Err(refused);
                }
                if credentials.two_factor {
                    let challenge = self.challenge(&tenant, credentials).await;
                    if challenge.is_ok() {
                        self.metrics
                            .logins
                            .with_label_values(&["second_factor"])
                            .inc();
                    }
                    return challenge;
                }
                let session = self
                    .open_session(tenant, user, origin, Some(credentials.password_hash), None)
                    .await?;
                Ok(LoginOutcome::SignedIn(session))
            }
            (Some(tenant), Some(credentials)) => {
                let reason = match (locked, matched) {
                    (true, _) => LoginFailure::Locked,
                    (false, true) => LoginFailure::Deactivated,
                    (false, false) => LoginFailure::WrongPassword,
                };
                self.record_failure(&tenant, credentials.id, reason, origin, now)
                    .await;
                Err(ApiError::InvalidCredentials)
            }
            _ => {
                tracing::warn!("login failed: unknown organisation or email");
                self.metrics.logins.with_label_values(&["failed"]).inc();
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    /// Ends the principal's session.
    pub(crate) async fn logout(
        &self,
        principal: &Principal,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let (user, session_id) = match &principal.subject {
            Subject::User { user, session_id } => (user, *session_id),
            Subject::ApiToken(_) => return Err(ApiError::Forbidden),
        };
        sessions::revoke(&tenant.pool, &tenant.caches.sessions, session_id).await?;
        let command = UserCommand::RecordLogout { session_id };
        Ok(self
            .record_login(tenant, user.id, command, request_id, false)
            .await??)
    }

    /// Ends one session of the tenant: the principal's own, or anyone's for administrators.
    /// The user's history records it as a logout.
    pub(crate) async fn end_session(
        &self,
        principal: &Principal,
        session_id: Uuid,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let session = sessions::find(&tenant.pool, session_id)
            .await?
            .ok_or(ApiError::NotFound)?;
        if session.user_id != principal.user()?.id && !principal.is_admin() {
            return Err(ApiError::NotFound);
        }
        sessions::revoke(&tenant.pool, &tenant.caches.sessions, session_id).await?;
        let command = UserCommand::RecordLogout { session_id };
        Ok(self
            .record_login(tenant, session.user_id, command, request_id, false)
            .await??)
    }

    /// Ends every session of the principal, this one included.
    pub(crate) async fn logout_everywhere(
        &self,
        principal: &Principal,
        request_id: Uuid,
    ) -> Result<usize, ApiError> {
        let tenant = &principal.tenant;
        let user_id = principal.user()?.id;
        let live = sessions::live(&tenant.pool, user_id, self.sessions).await?;
        sessions::revoke_all(&tenant.pool, &tenant.caches.sessions, user_id, None).await?;
        for session in &live {
            let command = UserCommand::RecordLogout {
                session_id: session.id,
            };
            self.record_login(tenant, user_id, command, request_id, false)
                .await??;
        }
        Ok(live.len())
    }

    /// Counts one password attempt from the request's client against the per-address limit.
    /// IPv6 clients are counted per /64, which one subscriber usually holds whole.
    pub(crate) fn limit_attempts(&self, origin: &RequestOrigin) -> Result<(), ApiError> {
        let Some(ip) = origin
            .ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
        else {
            return Ok(());
        };
        let key = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        };
        if self.login_limiter.check_key(&key).is_err() {
            tracing::warn!("security: password attempt rate limit reached for a client address");
            self.metrics
                .logins
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(ApiError::TooManyAttempts);
        }
        Ok(())
    }

    /// Records a failed password attempt and waits for the read model, so the next attempt
    /// sees a lock this one caused. Never fails the caller: whatever happens here, the answer
    /// to the client is the same as for a missing account.
    pub(crate) async fn record_failure(
        &self,
        tenant: &Tenant,
        user_id: Uuid,
        reason: LoginFailure,
        origin: &RequestOrigin,
        at: chrono::DateTime<chrono::Utc>,
    ) {
        let command = UserCommand::RecordLoginFailure {
            reason,
            origin: origin.login_origin(),
            at,
        };
        let recorded = self
            .record_login(tenant, user_id, command, origin.request_id, true)
            .await;
        let recorded = matches!(recorded, Ok(Ok(())));
        self.metrics.logins.with_label_values(&["failed"]).inc();
        tracing::warn!(tenant.id = %tenant.id, user.id = %user_id, reason = ?reason, recorded, "login failed");
    }

    /// Appends a login, failure or logout event to the user's stream. It retries when
    /// concurrent attempts race for the stream's next sequence number (a burst of attempts on
    /// one account must never answer differently from attempts on a missing one), and waits
    /// for the read models only when asked (failures: a lock must be visible to the next
    /// attempt; successes: the login is in the history the client may read next). The user
    /// aggregate's refusal comes back as its own error.
    async fn record_login(
        &self,
        tenant: &Tenant,
        user_id: Uuid,
        command: UserCommand,
        request_id: Uuid,
        wait: bool,
    ) -> Result<Result<(), UserError>, ApiError> {
        let metadata = EventMetadata::new(Actor::User(user_id), request_id);
        self.command(tenant, &tenant.users, user_id, command, metadata)
            .retry_on_conflict(10)
            .wait_for_read_models(wait)
            .outcome()
            .await
    }

    /// Lifts a lock on a user's logins before it expires.
    pub(crate) async fn unlock_user(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        users::user(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let metadata = EventMetadata::new(principal.actor(), request_id);
        self.command(tenant, &tenant.users, id, UserCommand::Unlock, metadata)
            .await?;
        users::user(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    /// The server a bearer token's organisation lives on, when that is a region's server of
    /// its own and the organisation is open here: a request for it ends when that server goes
    /// down (the default server's outage ends every request anyway).
    pub(crate) async fn token_server(&self, token: &str) -> Option<Arc<Health>> {
        let parsed = BearerToken::parse(token)?;
        self.own_server(self.tenancy.server_of(parsed.tenant_id).await?)
    }

    /// `server`, if it is a region's server of its own rather than the default one.
    fn own_server(&self, server: Arc<Health>) -> Option<Arc<Health>> {
        (!Arc::ptr_eq(&server, &self.database)).then_some(server)
    }

    /// The principal for a bearer token — a session's or an API token's; `None` when the
    /// token is malformed, unknown, revoked or expired, or its user is inactive.
    pub(crate) async fn authenticate(
        &self,
        token: &str,
        origin: &RequestOrigin,
    ) -> Result<Option<Principal>, ApiError> {
        let Some(parsed) = BearerToken::parse(token) else {
            return Ok(None);
        };
        let Some(tenant) = self
            .tenancy
            .get(parsed.tenant_id)
            .await
            .map_err(ApiError::internal)?
        else {
            return Ok(None);
        };
        match parsed.kind {
            TokenKind::Session => {
                let cache = &tenant.caches.sessions;
                let live = match cache.get(&parsed.hash) {
                    Some(live) => live,
                    None => {
                        let ticket = cache.ticket();
                        let Some(live) =
                            sessions::authenticate(&tenant.pool, &parsed.hash, self.sessions)
                                .await?
                        else {
                            return Ok(None);
                        };
                        let fresh_for = sessions::cached_for(&live, self.sessions);
                        cache.put(ticket, parsed.hash.clone(), live.clone(), fresh_for);
                        live
                    }
                };
                if !live.user.active {
                    return Ok(None);
                }
                Ok(Some(Principal {
                    tenant,
                    subject: Subject::User {
                        user: live.user,
                        session_id: live.session_id,
                    },
                    grants: live.grants,
                    two_factor_required: live.two_factor_required,
                }))
            }
            TokenKind::ApiToken => self.authenticate_api_token(tenant, &parsed, origin).await,
            TokenKind::LoginChallenge | TokenKind::Download => Ok(None),
        }
    }
}

/// When a trial of `length` starting now ends.
fn trial_ends_at(length: std::time::Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() + chrono::Duration::from_std(length).unwrap_or(chrono::Duration::days(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_short_lower_case_names() {
        for good in ["acme", "acme-eu", "a1b", "x".repeat(63).as_str()] {
            assert!(check_slug(good).is_ok(), "{good}");
        }
        for bad in [
            "ab",
            "-acme",
            "acme-",
            "Acme",
            "acme corp",
            "ac_me",
            "x".repeat(64).as_str(),
            "",
        ] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }
}
