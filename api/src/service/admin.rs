//! User and role management, and self-service. Changes that must respect a rule spanning
//! several users — unique emails, unique role names, at least one active administrator — run
//! under the tenant's directory lock and wait for the read models before releasing it, so the
//! rule is checked against an up-to-date view on any number of instances.

use std::collections::BTreeSet;

use custos_domain::LoginFailure;
use custos_domain::{
    Email, EventMetadata, Grant, Grants, PersonName, RoleCommand, RoleName, UserCommand,
};
use custos_projections::roles::{self, RoleRow};
use custos_projections::users::{self, UserRow};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::auth::passwords::check_new_password;
use crate::auth::principal::Principal;
use crate::error::{ApiError, Problems};
use crate::infra::stores::{sessions, two_factor};
use crate::infra::tenancy::tenant::Tenant;
use crate::service::identity::RequestOrigin;
use crate::service::Services;

/// The most roles one user may hold: more would be a mistake, and each is checked and kept.
const MAX_ROLES_PER_USER: usize = 100;

/// A user an administrator creates.
pub(crate) struct NewUser {
    pub(crate) email: String,
    pub(crate) name: String,
    /// A temporary password the user must replace at first login.
    pub(crate) password: SecretString,
    pub(crate) roles: Vec<Uuid>,
    pub(crate) administrator: bool,
}

/// Changes to a user; `None` leaves a field as it is.
pub(crate) struct UserChanges {
    pub(crate) name: Option<String>,
    pub(crate) email: Option<String>,
    pub(crate) roles: Option<Vec<Uuid>>,
}

impl Services {
    /// Runs a user command as the principal and returns the user as the read model now shows it.
    pub(super) async fn change_user(
        &self,
        principal: &Principal,
        id: Uuid,
        command: UserCommand,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        self.command(
            tenant,
            &tenant.users,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.existing_user(tenant, id).await
    }

    pub(super) async fn existing_user(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<UserRow, ApiError> {
        users::user(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    async fn check_email_free(
        &self,
        tenant: &Tenant,
        email: &str,
        user: Option<Uuid>,
    ) -> Result<(), ApiError> {
        let parsed =
            Email::parse(email).map_err(|e| ApiError::validation("email", format!("email {e}")))?;
        match users::id_by_email(&tenant.pool, &parsed.normalized()).await? {
            Some(other) if Some(other) != user => Err(ApiError::validation(
                "email",
                "another user of this organisation has this email",
            )),
            _ => Ok(()),
        }
    }

    /// The roles `role_ids` names (each once), all checked to exist in one query.
    async fn check_roles(
        &self,
        tenant: &Tenant,
        role_ids: &[Uuid],
    ) -> Result<BTreeSet<Uuid>, ApiError> {
        let wanted: BTreeSet<Uuid> = role_ids.iter().copied().collect();
        if wanted.len() > MAX_ROLES_PER_USER {
            return Err(ApiError::validation(
                "roleIds",
                format!("a user has at most {MAX_ROLES_PER_USER} roles"),
            ));
        }
        let ids: Vec<Uuid> = wanted.iter().copied().collect();
        let found = roles::existing(&tenant.pool, &ids).await?;
        if let Some(missing) = ids.iter().find(|id| !found.contains(id)) {
            return Err(ApiError::validation(
                "roleIds",
                format!("no role has the id {missing}"),
            ));
        }
        Ok(wanted)
    }

    /// Refuses a change that would leave no active administrator.
    async fn keep_an_administrator(&self, tenant: &Tenant, user: &UserRow) -> Result<(), ApiError> {
        if user.is_admin && user.active && users::active_administrators(&tenant.pool).await? <= 1 {
            return Err(ApiError::Validation {
                message: "this is the last active administrator; make another user an administrator first".into(),
                field: None,
            });
        }
        Ok(())
    }

    /// Creates a user with a temporary password that must be changed at first login.
    pub(crate) async fn create_user(
        &self,
        principal: &Principal,
        input: NewUser,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        // Every problem of the form at once; the email is checked again under the lock.
        let mut problems = Problems::default();
        problems.check(
            PersonName::parse(&input.name)
                .map_err(|e| ApiError::validation("name", format!("name {e}"))),
        )?;
        problems.check(self.check_email_free(tenant, &input.email, None).await)?;
        problems.check(check_new_password(
            "temporaryPassword",
            &input.password,
            &[&input.email, &input.name],
        ))?;
        problems.check(self.check_roles(tenant, &input.roles).await)?;
        problems.done()?;
        let password_hash = self.passwords.hash(input.password).await?;
        let _lock = self.directory_lock(tenant).await?;
        self.check_email_free(tenant, &input.email, None).await?;
        let roles = self.check_roles(tenant, &input.roles).await?;
        let id = Uuid::now_v7();
        let command = UserCommand::Register {
            email: input.email,
            name: input.name,
            password_hash,
            administrator: input.administrator,
            roles,
            must_change_password: true,
        };
        self.change_user(principal, id, command, request_id).await
    }

    /// Changes a user's name, email or roles (one commit). Role changes take effect on the
    /// user's next request: permissions are read per request.
    pub(crate) async fn update_user(
        &self,
        principal: &Principal,
        id: Uuid,
        changes: UserChanges,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        self.existing_user(tenant, id).await?;
        // Every problem of the form at once.
        let mut problems = Problems::default();
        if let Some(name) = &changes.name {
            problems.check(
                PersonName::parse(name)
                    .map_err(|e| ApiError::validation("name", format!("name {e}"))),
            )?;
        }
        if let Some(email) = &changes.email {
            problems.check(self.check_email_free(tenant, email, Some(id)).await)?;
        }
        let roles = match &changes.roles {
            Some(ids) => problems.check(self.check_roles(tenant, ids).await)?,
            None => None,
        };
        problems.done()?;
        let command = UserCommand::Update {
            name: changes.name,
            email: changes.email,
            roles,
        };
        self.change_user(principal, id, command, request_id).await
    }

    /// Deactivates a user and ends all their sessions.
    pub(crate) async fn deactivate_user(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        let user = self.existing_user(tenant, id).await?;
        self.keep_an_administrator(tenant, &user).await?;
        // Sessions end first: if the command's read-model wait times out after it commits,
        // the user must not keep working meanwhile.
        sessions::revoke_all(&tenant.pool, &tenant.caches.sessions, id, None).await?;
        self.change_user(principal, id, UserCommand::Deactivate, request_id)
            .await
    }

    /// Erases a deactivated user's personal data: records `UserErased`, destroys the user's
    /// data key (their events — name, email, password hash, login origins — can never be read
    /// again), and removes their second factor and sessions. Their id stays, so history still
    /// shows that someone acted, not who. Irreversible.
    pub(crate) async fn erase_user(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let lock = self.directory_lock(tenant).await?;
        self.existing_user(tenant, id).await?;
        sessions::revoke_all(&tenant.pool, &tenant.caches.sessions, id, None).await?;
        let user = self
            .change_user(principal, id, UserCommand::Erase, request_id)
            .await?;
        self.ledger_erasure(tenant, id)?;
        tenant
            .subject_keys
            .erase(id)
            .await
            .map_err(ApiError::internal)?;
        two_factor::remove(&tenant.pool, id).await?;
        drop(lock);
        self.remove_rebuild_copies(tenant).await;
        tracing::info!(tenant.id = %tenant.id, user.id = %id, "a user's personal data was erased");
        Ok(user)
    }

    pub(crate) async fn reactivate_user(
        &self,
        principal: &Principal,
        id: Uuid,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        self.existing_user(tenant, id).await?;
        self.change_user(principal, id, UserCommand::Reactivate, request_id)
            .await
    }

    /// Makes a user an administrator or not; the last active administrator cannot be demoted.
    pub(crate) async fn set_administrator(
        &self,
        principal: &Principal,
        id: Uuid,
        administrator: bool,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        let user = self.existing_user(tenant, id).await?;
        if !administrator {
            self.keep_an_administrator(tenant, &user).await?;
        }
        let command = UserCommand::SetAdministrator { administrator };
        self.change_user(principal, id, command, request_id).await
    }

    /// Sets a temporary password the user must replace at next login; ends their sessions.
    pub(crate) async fn reset_password(
        &self,
        principal: &Principal,
        id: Uuid,
        temporary: SecretString,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let user = self.existing_user(tenant, id).await?;
        check_new_password("temporaryPassword", &temporary, &[&user.email, &user.name])?;
        let password_hash = self.passwords.hash(temporary).await?;
        sessions::revoke_all(&tenant.pool, &tenant.caches.sessions, id, None).await?;
        self.change_user(
            principal,
            id,
            UserCommand::ResetPassword { password_hash },
            request_id,
        )
        .await
    }

    /// The user changes their own password, proving the current one; their other sessions end.
    /// Proving the current password is a password attempt like a login: limited per client
    /// address, recorded when wrong, and refused while the account is locked.
    pub(crate) async fn change_password(
        &self,
        principal: &Principal,
        current: SecretString,
        new: SecretString,
        origin: &RequestOrigin,
    ) -> Result<UserRow, ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        let id = user.id;
        self.verify_own_password(principal, current.clone(), "currentPassword", origin)
            .await?;
        if new.expose_secret() == current.expose_secret() {
            return Err(ApiError::validation(
                "newPassword",
                "choose a password different from the current one",
            ));
        }
        check_new_password("newPassword", &new, &[&user.email, &user.name])?;
        let password_hash = self.passwords.hash(new).await?;
        sessions::revoke_all(
            &tenant.pool,
            &tenant.caches.sessions,
            id,
            principal.session_id(),
        )
        .await?;
        self.change_user(
            principal,
            id,
            UserCommand::ChangePassword { password_hash },
            origin.request_id,
        )
        .await
    }

    /// Checks the signed-in user's own password before a sensitive change (`field` names the
    /// argument). It is a password attempt like a login: limited per client address,
    /// recorded when wrong, and refused while the account is locked.
    pub(crate) async fn verify_own_password(
        &self,
        principal: &Principal,
        password: SecretString,
        field: &str,
        origin: &RequestOrigin,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let user = principal.user()?;
        self.limit_attempts(origin)?;
        let credentials = users::credentials(&tenant.pool, &user.email.to_lowercase())
            .await?
            .ok_or(ApiError::Unauthenticated)?;
        let now = chrono::Utc::now();
        let locked = credentials.locked_until.is_some_and(|until| until > now);
        let hash = (!locked).then(|| credentials.password_hash.clone());
        if self.passwords.verify(hash, password).await? {
            return Ok(());
        }
        let reason = if locked {
            LoginFailure::Locked
        } else {
            LoginFailure::WrongPassword
        };
        self.record_failure(tenant, user.id, reason, origin, now)
            .await;
        Err(ApiError::validation(field, "the password is wrong"))
    }

    /// The user changes their own name.
    pub(crate) async fn update_me(
        &self,
        principal: &Principal,
        name: String,
        request_id: Uuid,
    ) -> Result<UserRow, ApiError> {
        let id = principal.user()?.id;
        let command = UserCommand::Update {
            name: Some(name),
            email: None,
            roles: None,
        };
        self.change_user(principal, id, command, request_id).await
    }

    async fn existing_role(&self, tenant: &Tenant, id: Uuid) -> Result<RoleRow, ApiError> {
        roles::role(&tenant.pool, id)
            .await?
            .ok_or(ApiError::NotFound)
    }

    async fn check_role_name_free(
        &self,
        tenant: &Tenant,
        name: &str,
        role: Option<Uuid>,
    ) -> Result<(), ApiError> {
        let parsed =
            RoleName::parse(name).map_err(|e| ApiError::validation("name", format!("name {e}")))?;
        match roles::id_by_name(&tenant.pool, &parsed.normalized()).await? {
            Some(other) if Some(other) != role => {
                Err(ApiError::validation("name", "another role has this name"))
            }
            _ => Ok(()),
        }
    }

    /// Creates a role with the given grants, as `metadata`'s actor.
    pub(crate) async fn create_role_as(
        &self,
        tenant: &Tenant,
        name: &str,
        grants: Grants,
        metadata: EventMetadata,
    ) -> Result<RoleRow, ApiError> {
        let _lock = self.directory_lock(tenant).await?;
        self.check_role_name_free(tenant, name, None).await?;
        let id = Uuid::now_v7();
        let command = RoleCommand::Create {
            name: name.to_owned(),
            grants,
        };
        self.command(tenant, &tenant.roles, id, command, metadata)
            .await?;
        self.existing_role(tenant, id).await
    }

    pub(crate) async fn create_role(
        &self,
        principal: &Principal,
        name: &str,
        grants: Grants,
        request_id: Uuid,
    ) -> Result<RoleRow, ApiError> {
        self.create_role_as(
            &principal.tenant,
            name,
            grants,
            self.actor(principal, request_id),
        )
        .await
    }

    pub(crate) async fn rename_role(
        &self,
        principal: &Principal,
        id: Uuid,
        name: &str,
        request_id: Uuid,
    ) -> Result<RoleRow, ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        self.existing_role(tenant, id).await?;
        self.check_role_name_free(tenant, name, Some(id)).await?;
        self.command(
            tenant,
            &tenant.roles,
            id,
            RoleCommand::Rename {
                name: name.to_owned(),
            },
            self.actor(principal, request_id),
        )
        .await?;
        self.existing_role(tenant, id).await
    }

    /// Grants or revokes one permission; users holding the role are affected on their next request.
    pub(crate) async fn set_grant(
        &self,
        principal: &Principal,
        id: Uuid,
        grant: Grant,
        granted: bool,
        request_id: Uuid,
    ) -> Result<RoleRow, ApiError> {
        let tenant = &principal.tenant;
        self.existing_role(tenant, id).await?;
        let command = if granted {
            RoleCommand::Grant { grant }
        } else {
            RoleCommand::Revoke { grant }
        };
        self.command(
            tenant,
            &tenant.roles,
            id,
            command,
            self.actor(principal, request_id),
        )
        .await?;
        self.existing_role(tenant, id).await
    }

    /// Deletes a role. Refused while users hold it, unless `reassign_to` names the role they
    /// get instead.
    pub(crate) async fn delete_role(
        &self,
        principal: &Principal,
        id: Uuid,
        reassign_to: Option<Uuid>,
        request_id: Uuid,
    ) -> Result<(), ApiError> {
        let tenant = &principal.tenant;
        let _lock = self.directory_lock(tenant).await?;
        self.existing_role(tenant, id).await?;
        // Moving an integration to another role could widen what it may do: its administrator
        // revokes it and creates a token for the new role instead.
        let tokens = custos_projections::api_tokens::live_with_role(&tenant.pool, id).await?;
        if tokens > 0 {
            return Err(ApiError::validation(
                "id",
                format!("{tokens} API token(s) act with this role: revoke them first"),
            ));
        }
        let holders = users::holders_of(&tenant.pool, id).await?;
        if !holders.is_empty() {
            let Some(target) = reassign_to else {
                return Err(ApiError::validation(
                    "reassignTo",
                    format!(
                        "{} user(s) hold this role: pass reassignTo to move them to another role",
                        holders.len()
                    ),
                ));
            };
            if target == id || roles::role(&tenant.pool, target).await?.is_none() {
                return Err(ApiError::validation(
                    "reassignTo",
                    "reassignTo must be another existing role",
                ));
            }
            for holder in holders {
                let mut roles: BTreeSet<Uuid> =
                    holder.roles.iter().copied().filter(|r| *r != id).collect();
                roles.insert(target);
                let command = UserCommand::Update {
                    name: None,
                    email: None,
                    roles: Some(roles),
                };
                self.command(
                    tenant,
                    &tenant.users,
                    holder.id,
                    command,
                    self.actor(principal, request_id),
                )
                .await?;
            }
        }
        self.command(
            tenant,
            &tenant.roles,
            id,
            RoleCommand::Delete,
            self.actor(principal, request_id),
        )
        .await
    }
}
