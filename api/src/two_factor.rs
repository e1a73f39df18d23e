//! Two-factor authentication: TOTP (RFC 6238; SHA-1, 6 digits, 30 s steps, the parameters
//! every authenticator app understands) and one-time recovery codes, with the login
//! challenges that wait for them.
//!
//! TOTP secrets are operational secrets, not history: they live in `two_factor_secrets`,
//! outside the event log, encrypted with XChaCha20-Poly1305 under a per-tenant key derived
//! from the master key and bound to the user's id. Recovery codes and challenge tokens are
//! stored only as SHA-256 hashes. What happened (enabled, reset, which factor completed a
//! login, wrong codes) is recorded as User events.

use std::time::Duration;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use crate::error::ApiError;

/// TOTP parameters: a code is valid for its 30-second step and one step either side.
const STEP_SECONDS: u64 = 30;
const DIGITS: usize = 6;
const SKEW_STEPS: u64 = 1;
/// 160-bit secrets, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// How many recovery codes a user gets, and their shape: 16 characters of a 32-letter
/// alphabet without look-alikes (80 random bits), shown in groups of four.
pub const RECOVERY_CODES: usize = 10;
const RECOVERY_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const RECOVERY_LENGTH: usize = 16;

/// A login waiting for its second factor lasts this long, and survives this many wrong codes
/// (each of which also counts toward the account's lock).
pub const CHALLENGE_LIFETIME: Duration = Duration::from_secs(5 * 60);
pub const CHALLENGE_ATTEMPTS: i32 = 5;

/// What a user needs to add Custos to an authenticator app.
pub struct Enrolment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_code_svg: String,
}

/// A new random TOTP secret.
pub fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The otpauth URI and QR code for `secret`, labelled with the organisation and the email.
pub fn enrolment(secret: Vec<u8>, organization: &str, email: &str) -> Result<Enrolment, ApiError> {
    // The URI's label is `issuer:account`; a colon inside either would split it wrongly.
    let issuer = organization.replace(':', " ");
    let account = email.replace(':', " ");
    let totp = TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        secret,
        Some(issuer),
        account,
    )
    .map_err(|err| ApiError::internal(anyhow::anyhow!("building a TOTP URI failed: {err:?}")))?;
    let uri = totp.get_url();
    let qr = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|err| ApiError::internal(anyhow::anyhow!("rendering a QR code failed: {err}")))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(Enrolment {
        secret: totp.get_secret_base32(),
        otpauth_uri: uri,
        qr_code_svg: qr,
    })
}

/// The TOTP time step (Unix time / 30) whose code is `code`, among the steps around `now`.
pub fn matching_step(secret: &[u8], code: &str, now: DateTime<Utc>) -> Option<u64> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp = TOTP::new_unchecked(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECONDS,
        secret.to_vec(),
        None,
        String::new(),
    );
    let current = u64::try_from(now.timestamp()).ok()? / STEP_SECONDS;
    let mut matched = None;
    // Every candidate is compared, in constant time, whichever matches.
    for step in current.saturating_sub(SKEW_STEPS)..=current + SKEW_STEPS {
        let expected = totp.generate(step * STEP_SECONDS);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            matched = Some(step);
        }
    }
    matched
}

/// Seals a TOTP secret for storage, bound to its user.
pub fn seal(key: &SecretBox<[u8; 32]>, user_id: Uuid, secret: &[u8]) -> Result<Vec<u8>, ApiError> {
    let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::rngs::OsRng);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: secret,
                aad: user_id.as_bytes(),
            },
        )
        .map_err(|_| ApiError::internal(anyhow::anyhow!("sealing a TOTP secret failed")))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

/// Opens a sealed TOTP secret. Fails if it was sealed for another user or tenant, or altered.
pub fn open(key: &SecretBox<[u8; 32]>, user_id: Uuid, sealed: &[u8]) -> Result<Vec<u8>, ApiError> {
    const NONCE: usize = 24;
    let failed = || ApiError::internal(anyhow::anyhow!("a stored TOTP secret does not open"));
    if sealed.len() < NONCE {
        return Err(failed());
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE);
    XChaCha20Poly1305::new(key.expose_secret().into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: user_id.as_bytes(),
            },
        )
        .map_err(|_| failed())
}

/// Fresh recovery codes, formatted for reading (`ABCD-EFGH-JKLM-NPQR`).
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: Vec<u8> = (0..RECOVERY_LENGTH)
                .map(|_| RECOVERY_ALPHABET[rng.gen_range(0..RECOVERY_ALPHABET.len())])
                .collect();
            chars
                .chunks(4)
                .map(|group| String::from_utf8_lossy(group).into_owned())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// What is stored for a recovery code: a SHA-256 of its letters, upper-cased, without dashes
/// or spaces (so however the user types it, it matches). `None` if it cannot be one.
pub fn recovery_code_hash(code: &str) -> Option<Vec<u8>> {
    let letters: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid =
        letters.len() == RECOVERY_LENGTH && letters.bytes().all(|b| RECOVERY_ALPHABET.contains(&b));
    valid.then(|| Sha256::digest(letters.as_bytes()).to_vec())
}

/// A login waiting for its second factor.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    pub user_id: Uuid,
    /// The password hash the first step verified.
    pub password_hash: String,
}

/// The tables behind two-factor authentication, in a tenant database.
pub mod store {
    use super::*;

    /// Starts (or restarts) an enrolment: the sealed secret waits for its first code.
    pub async fn put_secret(pool: &PgPool, user_id: Uuid, sealed: &[u8]) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO two_factor_secrets (user_id, secret) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET secret = $2, last_step = 0, created_at = now()",
        )
        .bind(user_id)
        .bind(sealed)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The user's sealed secret, if any.
    pub async fn sealed_secret(pool: &PgPool, user_id: Uuid) -> sqlx::Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT secret FROM two_factor_secrets WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(pool)
            .await
    }

    /// Accepts a code of time step `step` once: false if this or a later step was already
    /// used (a replayed or older code).
    pub async fn accept_step(pool: &PgPool, user_id: Uuid, step: u64) -> sqlx::Result<bool> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        let updated = sqlx::query(
            "UPDATE two_factor_secrets SET last_step = $2 WHERE user_id = $1 AND last_step < $2",
        )
        .bind(user_id)
        .bind(step)
        .execute(pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Replaces the user's recovery codes.
    pub async fn replace_recovery_codes(
        pool: &PgPool,
        user_id: Uuid,
        codes: &[String],
    ) -> sqlx::Result<()> {
        let hashes: Vec<Vec<u8>> = codes.iter().filter_map(|c| recovery_code_hash(c)).collect();
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])",
        )
        .bind(user_id)
        .bind(hashes)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Uses up a recovery code: false if it is not one of the user's unused codes.
    pub async fn use_recovery_code(
        pool: &PgPool,
        user_id: Uuid,
        hash: &[u8],
    ) -> sqlx::Result<bool> {
        let updated = sqlx::query(
            "UPDATE recovery_codes SET used_at = now()
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(hash)
        .execute(pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// How many of the user's recovery codes are unused.
    pub async fn unused_recovery_codes(pool: &PgPool, user_id: Uuid) -> sqlx::Result<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(pool)
        .await
    }

    /// Removes the user's secret, recovery codes and pending login challenges.
    pub async fn remove(pool: &PgPool, user_id: Uuid) -> sqlx::Result<()> {
        let mut tx = pool.begin().await?;
        for table in ["two_factor_secrets", "recovery_codes", "login_challenges"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Stores a login challenge (and drops the user's expired ones); returns its expiry.
    pub async fn create_challenge(
        pool: &PgPool,
        token_hash: &[u8],
        challenge: &Challenge,
    ) -> sqlx::Result<DateTime<Utc>> {
        sqlx::query("DELETE FROM login_challenges WHERE user_id = $1 AND expires_at <= now()")
            .bind(challenge.user_id)
            .execute(pool)
            .await?;
        sqlx::query_scalar(
            "INSERT INTO login_challenges (token_hash, user_id, password_hash, expires_at)
             VALUES ($1, $2, $3, now() + $4 * interval '1 second') RETURNING expires_at",
        )
        .bind(token_hash)
        .bind(challenge.user_id)
        .bind(&challenge.password_hash)
        .bind(CHALLENGE_LIFETIME.as_secs_f64())
        .fetch_one(pool)
        .await
    }

    /// The live challenge with this token hash.
    pub async fn challenge(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<Option<Challenge>> {
        sqlx::query_as(
            "SELECT user_id, password_hash FROM login_challenges
             WHERE token_hash = $1 AND expires_at > now() AND attempts < $2",
        )
        .bind(token_hash)
        .bind(CHALLENGE_ATTEMPTS)
        .fetch_optional(pool)
        .await
    }

    /// Counts a wrong code against the challenge.
    pub async fn count_wrong_code(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<()> {
        sqlx::query("UPDATE login_challenges SET attempts = attempts + 1 WHERE token_hash = $1")
            .bind(token_hash)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Ends a challenge, so its token cannot complete a second login. False if it had
    /// already ended (another request completed it first).
    pub async fn end_challenge(pool: &PgPool, token_hash: &[u8]) -> sqlx::Result<bool> {
        let deleted = sqlx::query("DELETE FROM login_challenges WHERE token_hash = $1")
            .bind(token_hash)
            .execute(pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SecretBox<[u8; 32]> {
        SecretBox::new(Box::new([byte; 32]))
    }

    #[test]
    fn codes_match_their_step_and_its_neighbours_only() {
        // RFC 6238 appendix B: the SHA-1 secret "12345678901234567890" at T = 59 s gives
        // 94287082; its last six digits are the 6-digit code.
        let secret = b"12345678901234567890";
        let at = |seconds| DateTime::from_timestamp(seconds, 0).unwrap();
        assert_eq!(matching_step(secret, "287082", at(59)), Some(1));
        assert_eq!(
            matching_step(secret, "287082", at(89)),
            Some(1),
            "one step late"
        );
        assert_eq!(
            matching_step(secret, "287082", at(119)),
            None,
            "two steps late"
        );
        assert_eq!(matching_step(secret, "28708", at(59)), None);
        assert_eq!(matching_step(secret, "28708a", at(59)), None);
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let user = Uuid::now_v7();
        let sealed = seal(&key(1), user, b"secret bytes").unwrap();
        assert_eq!(open(&key(1), user, &sealed).unwrap(), b"secret bytes");
        assert!(open(&key(2), user, &sealed).is_err());
        assert!(open(&key(1), Uuid::now_v7(), &sealed).is_err());
        assert!(open(&key(1), user, &sealed[..10]).is_err());
        assert_ne!(
            sealed,
            seal(&key(1), user, b"secret bytes").unwrap(),
            "fresh nonces"
        );
    }

    #[test]
    fn recovery_codes_are_random_and_match_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert_eq!(codes[0].len(), 19);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let hash = recovery_code_hash(&codes[0]).unwrap();
        let typed = codes[0].replace('-', " ").to_lowercase();
        assert_eq!(recovery_code_hash(&typed), Some(hash));
        assert_eq!(recovery_code_hash("123456"), None);
        assert_eq!(
            recovery_code_hash("ABCD-EFGH-JKLM-NPQ0"),
            None,
            "0 is not in the alphabet"
        );
    }

    #[test]
    fn enrolment_gives_a_uri_and_a_qr_code() {
        let enrolment = enrolment(new_secret(), "Acme: EU", "ada@acme.example").unwrap();
        assert!(enrolment
            .otpauth_uri
            .starts_with("otpauth://totp/Acme%20%20EU:ada%40acme.example?secret="));
        assert!(enrolment.otpauth_uri.contains(&enrolment.secret));
        assert!(enrolment.qr_code_svg.contains("<svg"));
    }
}
