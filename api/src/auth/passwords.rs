//! Passwords: the policy for new ones, and argon2id hashing and verification on the blocking
//! pool, a few at a time.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// OWASP's argon2id baseline: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The shortest and longest passwords accepted. Long passphrases are welcome; the upper
/// bound only keeps one request from buying unbounded hashing work.
pub(crate) const MIN_PASSWORD: usize = 12;
pub(crate) const MAX_PASSWORD: usize = 1024;

/// How many characters the strength estimator looks at: its cost grows with length, and a
/// password this long is not weak for its length. The hash always covers the whole password.
const ESTIMATED_PREFIX: usize = 256;

/// Checks a new password against the policy (OWASP ASVS 5: 12 to 1024 characters, never
/// truncated, not guessable): zxcvbn must rate it at least 3 of 4, counting the user's own
/// email, name and organisation (`context`) as guessable words. The error, on `field` (the
/// input's name for the password), names the rule and zxcvbn's warning, never the password.
pub(crate) fn check_new_password(
    field: &str,
    password: &SecretString,
    context: &[&str],
) -> Result<(), ApiError> {
    let length = password.expose_secret().chars().count();
    if length < MIN_PASSWORD {
        return Err(ApiError::validation(
            field,
            format!("the password must have at least {MIN_PASSWORD} characters"),
        ));
    }
    if length > MAX_PASSWORD {
        return Err(ApiError::validation(
            field,
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
            field,
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
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so that answer takes as long as a
    /// wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub(crate) fn new(concurrency: usize) -> Self {
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
    pub(crate) async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
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
    pub(crate) async fn verify(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_policy_counts_characters() {
        let check = |p: &str| {
            check_new_password(
                "password",
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
