//! Two-factor authentication use cases: the second login step, enrolment, recovery codes,
//! turning it off, and the administrators' reset and tenant-wide requirement.

use std::sync::Arc;

use chrono::Utc;
use custos_domain::{LoginFailure, OrganizationCommand, SecondFactor, UserCommand};
use custos_projections::organization;
use custos_projections::users::{self, Credentials, UserRow};
use secrecy::SecretString;
use uuid::Uuid;

use crate::auth::principal::Principal;
use crate::auth::tokens::{BearerToken, TokenKind};
use crate::auth::totp::{self, Enrolment};
use crate::error::ApiError;
use crate::infra::stores::two_factor::{self as store, Challenge};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::identity::{LoginOutcome, RequestOrigin, SignedIn};
use crate::service::Services;

impl Services {
    /// The first step of a login with a second factor succeeded: hands out a challenge.
    pub(super) async fn challenge(
        &self,
        tenant: &Tenant,
        credentials: Credentials,
    ) -> Result<LoginOutcome, ApiError> {
        let (challenge, stored) = BearerToken::generate(TokenKind::LoginChallenge, tenant.id);
        let expires_at = store::create_challenge(
            &tenant.pool,
            &stored.hash,
            &Challenge {
                user_id: credentials.id,
                password_hash: credentials.password_hash,
            },
        )
        .await?;
        tracing::info!(tenant.id = %tenant.id, user.id = %credentials.id, "login waits for a second factor");
        Ok(LoginOutcome::SecondFactorRequired {
            challenge,
            expires_at,
        })
    }

    /// The second login step: a TOTP code, or a recovery code, for a challenge from `login`.
    /// A wrong code counts toward the account's lock like a wrong password, and a challenge
    /// survives only a few of them.
    pub(crate) async fn complete_login(
        &self,
        challenge: &str,
        code: &str,
        origin: &RequestOrigin,
    ) -> Result<SignedIn, ApiError> {
        self.limit_attempts(origin)?;
        let parsed = BearerToken::parse(challenge)
            .filter(|parsed| parsed.kind == TokenKind::LoginChallenge)
            .ok_or(ApiError::InvalidSecondFactor)?;
        let tenant = self
            .tenancy
            .get(parsed.tenant_id)
            .await
            .map_err(ApiError::internal)?
            .ok_or(ApiError::InvalidSecondFactor)?;
        let pending = store::challenge(&tenant.pool, &parsed.hash)
            .await?
            .ok_or(ApiError::InvalidSecondFactor)?;
        let now = Utc::now();
        let user = users::user(&tenant.pool, pending.user_id)
            .await?
            .ok_or(ApiError::InvalidSecondFactor)?;
        // As for passwords: a locked account's code is not checked, and the attempt does not
        // count toward the next lock.
        let locked = users::credentials(&tenant.pool, &user.email.to_lowercase())
            .await?
            .is_some_and(|c| c.locked_until.is_some_and(|until| until > now));
        if locked {
            self.record_failure(&tenant, user.id, LoginFailure::Locked, origin, now)
                .await;
            return Err(ApiError::InvalidSecondFactor);
        }
        let Some(second_factor) = self.check_second_factor(&tenant, user.id, code).await? else {
            store::count_wrong_code(&tenant.pool, &parsed.hash).await?;
            self.record_failure(
                &tenant,
                user.id,
                LoginFailure::WrongSecondFactor,
                origin,
                now,
            )
            .await;
            return Err(ApiError::InvalidSecondFactor);
        };
        // One challenge opens one session, however many requests race with it.
        if !store::end_challenge(&tenant.pool, &parsed.hash).await? {
            return Err(ApiError::InvalidSecondFactor);
        }
        self.open_session(
            tenant,
            user,
            origin,
            Some(pending.password_hash),
            Some(second_factor),
        )
        .await
    }

    /// Checks a TOTP code (six digits; each accepted once) or an unused recovery code (used
    /// up here) of the user. `None` when it is neither.
    async fn check_second_factor(
        &self,
        tenant: &Tenant,
        user_id: Uuid,
        code: &str,
    ) -> Result<Option<SecondFactor>, ApiError> {
        let code = code.trim();
        if code.len() > 64 {
            return Ok(None);
        }
        if let Some(hash) = totp::recovery_code_hash(code) {
            let used = store::use_recovery_code(&tenant.pool, user_id, &hash).await?;
            return Ok(used.then_some(SecondFactor::RecoveryCode));
        }
        let Some(sealed) = store::sealed_secret(&tenant.pool, user_id).await? else {
            return Ok(None);
        };
        let secret = totp::open(&tenant.two_factor_key, user_id, &sealed)?;
        let Some(step) = totp::matching_step(&secret, code, Utc::now()) else {
            return Ok(None);
        };
        let fresh = store::accept_step(&tenant.pool, user_id, step).await?;
        Ok(fresh.then_some(SecondFactor::Totp))
    }

    /// Starts enrolling the signed-in user: a new secret, to add to an authenticator app and
    /// confirm with a first code. Starting again replaces an unconfirmed secret.
    pub(crate) async fn begin_two_factor_enrolment(
        &self,
        principal: &Principal,
    ) -> Result<Enrolment, ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        if user.two_factor {
            return Err(ApiError::validation(
                "twoFactor",
                "two-factor authentication is already on; turn it off first to change devices",
            ));
        }
        let secret = totp::new_secret();
        let sealed = totp::seal(&tenant.two_factor_key, user.id, &secret)?;
        store::put_secret(&tenant.pool, user.id, &sealed).await?;
        totp::enrolment(secret, &tenant.name, &user.email)
    }

    /// Confirms an enrolment with a code from the new authenticator: from now on logins need
    /// a second factor. Answers the recovery codes, shown only here.
    pub(crate) async fn confirm_two_factor_enrolment(
        &self,
        principal: &Principal,
        code: &str,
        origin: &RequestOrigin,
    ) -> Result<Vec<String>, ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        if user.two_factor {
            return Err(ApiError::validation(
                "code",
                "two-factor authentication is already on",
            ));
        }
        self.limit_attempts(origin)?;
        let Some(sealed) = store::sealed_secret(&tenant.pool, user.id).await? else {
            return Err(ApiError::validation(
                "code",
                "no enrolment is waiting: call beginTwoFactorEnrolment first",
            ));
        };
        let secret = totp::open(&tenant.two_factor_key, user.id, &sealed)?;
        let accepted = match totp::matching_step(&secret, code.trim(), Utc::now()) {
            Some(step) => store::accept_step(&tenant.pool, user.id, step).await?,
            None => false,
        };
        if !accepted {
            return Err(ApiError::validation(
                "code",
                "the code does not match; check the authenticator's clock and try the next code",
            ));
        }
        self.change_user(
            principal,
            user.id,
            UserCommand::EnableTwoFactor,
            origin.request_id,
        )
        .await?;
        let codes = totp::new_recovery_codes();
        store::replace_recovery_codes(&tenant.pool, user.id, &recovery_hashes(&codes)).await?;
        Ok(codes)
    }

    /// Replaces the signed-in user's recovery codes; needs a current TOTP or recovery code.
    pub(crate) async fn regenerate_recovery_codes(
        &self,
        principal: &Principal,
        code: &str,
        origin: &RequestOrigin,
    ) -> Result<Vec<String>, ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        if !user.two_factor {
            return Err(ApiError::validation(
                "code",
                "two-factor authentication is not on",
            ));
        }
        self.limit_attempts(origin)?;
        if self
            .check_second_factor(tenant, user.id, code)
            .await?
            .is_none()
        {
            self.record_failure(
                tenant,
                user.id,
                LoginFailure::WrongSecondFactor,
                origin,
                Utc::now(),
            )
            .await;
            return Err(ApiError::validation("code", "the code is wrong or used"));
        }
        self.change_user(
            principal,
            user.id,
            UserCommand::RegenerateRecoveryCodes,
            origin.request_id,
        )
        .await?;
        let codes = totp::new_recovery_codes();
        store::replace_recovery_codes(&tenant.pool, user.id, &recovery_hashes(&codes)).await?;
        Ok(codes)
    }

    /// The signed-in user turns two-factor authentication off, proving their password;
    /// refused while the organisation requires it.
    pub(crate) async fn disable_two_factor(
        &self,
        principal: &Principal,
        password: SecretString,
        origin: &RequestOrigin,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        if organization::two_factor_required(&tenant.pool).await? {
            return Err(ApiError::validation(
                "twoFactor",
                "your organisation requires two-factor authentication",
            ));
        }
        self.verify_own_password(principal, password, "password", origin)
            .await?;
        let user = self
            .change_user(
                principal,
                user.id,
                UserCommand::DisableTwoFactor,
                origin.request_id,
            )
            .await?;
        store::remove(&tenant.pool, user.id).await?;
        Ok(user)
    }

    /// An administrator removes a user's second factor (a lost device); the user logs in with
    /// the password alone and may enrol again (must, if the organisation requires it).
    pub(crate) async fn reset_two_factor(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        self.existing_user(tenant, id).await?;
        let user = self
            .change_user(principal, id, UserCommand::ResetTwoFactor, request_id)
            .await?;
        store::remove(&tenant.pool, id).await?;
        tracing::info!(tenant.id = %tenant.id, user.id = %id, "security: a user's second factor was reset");
        Ok(user)
    }

    /// Requires (or stops requiring) every user of the organisation to log in with a second
    /// factor. Users without one can then only enrol, change their password and log out.
    pub(crate) async fn set_two_factor_required(
        &self,
        principal: &Principal,
        required: bool,
        request_id: Uuid,
    ) -> Result<bool, ApiError> {
        let tenant: &Arc<Tenant> = &principal.tenant;
        self.command(
            tenant,
            &tenant.organization,
            tenant.id,
            OrganizationCommand::RequireTwoFactor { required },
            self.actor(principal, request_id),
        )
        .await?;
        Ok(organization::two_factor_required(&tenant.pool).await?)
    }
}

/// What is stored of recovery codes: their hashes.
fn recovery_hashes(codes: &[String]) -> Vec<Vec<u8>> {
    codes
        .iter()
        .filter_map(|code| totp::recovery_code_hash(code))
        .collect()
}
