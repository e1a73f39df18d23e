//! Passwords: the policy for new ones, and argon2id hashing and verification on the blocking
//! pool, a few at a time.

use std::sync::{Arc, Mutex};

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
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

/// Argon2's working memory (19 MiB a hash), kept for the next hash instead of allocated and
/// freed by each. Freeing a block that large raises glibc's threshold for serving allocations
/// from the memory map, after which each blocking thread's arena kept a copy of its own: a
/// login flood left the process holding about 320 MB instead of 55 (docs/performance.md). At
/// most as many as hash at once are kept.
#[derive(Default)]
struct Memory(Mutex<Vec<Vec<Block>>>);

impl Memory {
    /// Runs `f` with at least `blocks` blocks of working memory.
    fn with<T>(&self, blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut memory = kept.unwrap_or_default();
        if memory.len() < blocks {
            memory = vec![Block::default(); blocks];
        }
        let answer = f(&mut memory);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(memory);
        answer
    }
}

/// An argon2id PHC string for `password` with our parameters, computed in `memory` (the string
/// `PasswordHasher::hash_password` gives).
fn hash_in(password: &[u8], memory: &mut [Block]) -> argon2::password_hash::Result<String> {
    let argon2 = argon2();
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_bytes)?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)?)
    })?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(argon2.params())?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

/// Whether `password` gives `hash` (a PHC string, with the parameters it names), computed in
/// `memory` and compared in constant time (`PasswordVerifier::verify_password`'s answer).
fn verify_in(
    password: &[u8],
    hash: &PasswordHash<'_>,
    params: Params,
    memory: &mut [Block],
) -> bool {
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version)) = (
        Algorithm::try_from(hash.algorithm),
        hash.version
            .map_or(Ok(Version::default()), Version::try_from),
    ) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    Output::init_with(expected.len(), |out| {
        Ok(argon2.hash_password_into_with_memory(password, salt_bytes, out, &mut *memory)?)
    })
    .is_ok_and(|computed| computed == expected)
}

/// Hashes and verifies passwords on the blocking pool, at most `concurrency` at once, so a
/// login flood queues here instead of starving the async workers.
#[derive(Clone)]
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
    memory: Arc<Memory>,
    /// Verified against when the user does not exist, so that answer takes as long as a
    /// wrong password.
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub(crate) fn new(concurrency: usize) -> Self {
        let memory = Arc::new(Memory::default());
        let dummy = memory
            .with(argon2().params().block_count(), |memory| {
                hash_in(b"custos-dummy-password", memory)
            })
            .expect("hashing a constant succeeds");
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            memory,
            dummy_hash: dummy.into(),
        }
    }

    /// An argon2id PHC string for `password`.
    pub(crate) async fn hash(&self, password: SecretString) -> Result<String, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let memory = self.memory.clone();
        tokio::task::spawn_blocking(move || {
            memory
                .with(argon2().params().block_count(), |blocks| {
                    hash_in(password.expose_secret().as_bytes(), blocks)
                })
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
        let memory = self.memory.clone();
        let matched = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            let Ok(params) = Params::try_from(&parsed) else {
                return false;
            };
            memory.with(params.block_count(), |blocks| {
                verify_in(password.expose_secret().as_bytes(), &parsed, params, blocks)
            })
        })
        .await
        .map_err(ApiError::internal)?;
        Ok(known && matched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes made in kept memory are the crate's own PHC strings, and the crate's verify ours
    /// and the other way round (stored hashes keep working); a wrong password, another salt or
    /// a changed hash does not verify.
    #[tokio::test]
    async fn hashes_in_kept_memory_are_argon2s_own() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let passwords = Passwords::new(1);
        let secret = |p: &str| SecretString::from(p.to_owned());
        let ours = passwords
            .hash(secret("a long enough password"))
            .await
            .unwrap();
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2()
            .verify_password(b"a long enough password", &parsed)
            .is_ok());
        assert!(argon2()
            .verify_password(b"a long enough passworD", &parsed)
            .is_err());

        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let theirs = argon2()
            .hash_password(b"another long password", &salt)
            .unwrap()
            .to_string();
        // Kept memory is reused: the second and third calls run in the first one's blocks.
        for _ in 0..2 {
            let verify = |hash: &str, password: &str| {
                passwords.verify(Some(hash.to_owned()), secret(password))
            };
            assert!(verify(&theirs, "another long password").await.unwrap());
            assert!(!verify(&theirs, "another long passwore").await.unwrap());
            assert!(verify(&ours, "a long enough password").await.unwrap());
            // One character of the hash itself changed (not its last, which carries padding).
            let at = ours.len() - 10;
            let other = if &ours[at..=at] == "A" { "B" } else { "A" };
            let changed = format!("{}{other}{}", &ours[..at], &ours[at + 1..]);
            assert!(!verify(&changed, "a long enough password").await.unwrap());
        }
        assert!(!passwords
            .verify(None, secret("a long enough password"))
            .await
            .unwrap());
        assert!(!passwords
            .verify(Some("not a hash".into()), secret("x"))
            .await
            .unwrap());
        assert_eq!(
            passwords.memory.0.lock().unwrap().len(),
            1,
            "one hash at a time keeps one"
        );
    }

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
