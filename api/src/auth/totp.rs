//! Two-factor authentication: TOTP (RFC 6238; SHA-1, 6 digits, 30 s steps, the parameters
//! every authenticator app understands) and one-time recovery codes, with the login
//! challenges that wait for them.
//!
//! TOTP secrets are operational secrets, not history: they live in `two_factor_secrets`
//! (`infra::stores::two_factor`), outside the event log, encrypted with XChaCha20-Poly1305 under a per-tenant key derived
//! from the master key and bound to the user's id. Recovery codes and challenge tokens are
//! stored only as SHA-256 hashes. What happened (enabled, reset, which factor completed a
//! login, wrong codes) is recorded as User events.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use secrecy::{ExposeSecret, SecretBox};
use sha2::{Digest, Sha256};
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
pub(crate) const RECOVERY_CODES: usize = 10;
const RECOVERY_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const RECOVERY_LENGTH: usize = 16;

/// What a user needs to add Custos to an authenticator app.
pub(crate) struct Enrolment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_code_svg: String,
}

/// A new random TOTP secret.
pub(crate) fn new_secret() -> Vec<u8> {
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The otpauth URI and QR code for `secret`, labelled with the organisation and the email.
pub(crate) fn enrolment(
    secret: Vec<u8>,
    organization: &str,
    email: &str,
) -> Result<Enrolment, ApiError> {
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
pub(crate) fn matching_step(secret: &[u8], code: &str, now: DateTime<Utc>) -> Option<u64> {
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
pub(crate) fn seal(
    key: &SecretBox<[u8; 32]>,
    user_id: Uuid,
    secret: &[u8],
) -> Result<Vec<u8>, ApiError> {
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
pub(crate) fn open(
    key: &SecretBox<[u8; 32]>,
    user_id: Uuid,
    sealed: &[u8],
) -> Result<Vec<u8>, ApiError> {
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
pub(crate) fn new_recovery_codes() -> Vec<String> {
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
pub(crate) fn recovery_code_hash(code: &str) -> Option<Vec<u8>> {
    let letters: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let valid =
        letters.len() == RECOVERY_LENGTH && letters.bytes().all(|b| RECOVERY_ALPHABET.contains(&b));
    valid.then(|| Sha256::digest(letters.as_bytes()).to_vec())
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
