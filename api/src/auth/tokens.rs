//! Bearer tokens: sessions, API tokens, login challenges and download links, each a random
//! secret with a kind prefix and the tenant's id; only a SHA-256 of a token is ever stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// What a bearer-style token stands for; its prefix says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
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
pub(crate) struct BearerToken {
    pub kind: TokenKind,
    pub tenant_id: Uuid,
    pub hash: Vec<u8>,
}

impl BearerToken {
    /// A new token of `kind` for `tenant_id`: the secret to hand out once, and what to store.
    pub(crate) fn generate(kind: TokenKind, tenant_id: Uuid) -> (SecretString, Self) {
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
    pub(crate) fn parse(token: &str) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

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
}
