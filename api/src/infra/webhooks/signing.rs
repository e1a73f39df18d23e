//! Signatures as the Standard Webhooks specification defines them (what its libraries for
//! every language verify): `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
//! under the secret `whsec_<base64 key>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use uuid::Uuid;

use crate::infra::keys::MasterKey;

/// A webhook's signing key: derived from the master key, the organisation and the webhook,
/// so it is stored nowhere and the same on every instance.
pub(crate) struct SigningKey(SecretBox<[u8; 32]>);

impl SigningKey {
    pub(crate) fn derive(master_key: &MasterKey, tenant_id: Uuid, webhook_id: Uuid) -> Self {
        Self(SecretBox::new(Box::new(master_key.derive(&format!(
            "custos/webhook-secret/{tenant_id}/{webhook_id}"
        )))))
    }

    #[cfg(test)]
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// The secret as the receiver configures it: `whsec_` and the key in base64.
    pub(crate) fn secret(&self) -> SecretString {
        SecretString::from(format!("whsec_{}", STANDARD.encode(self.0.expose_secret())))
    }

    /// The `webhook-signature` header of one message.
    pub(crate) fn sign(&self, message_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector was computed with the `standardwebhooks` Python package (1.1.0), the
    /// specification's reference library: `Webhook(secret).sign(id, datetime, body)`.
    #[test]
    fn signatures_match_the_standard_webhooks_reference_library() {
        let key = SigningKey::from_bytes(std::array::from_fn(|i| i as u8));
        assert_eq!(
            key.secret().expose_secret(),
            "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
        assert_eq!(
            key.sign(
                "01a23700-0000-7000-8000-000000000001",
                1_764_676_800,
                br#"{"type":"record.created"}"#
            ),
            "v1,wMWfPUhXqWcqLACNR/16JJj+b9dRfHYlCgW8svqMn60="
        );
    }

    #[test]
    fn each_webhook_has_its_own_key() {
        let master = MasterKey::from_hex(&"07".repeat(32)).unwrap();
        let tenant = Uuid::now_v7();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = |id| {
            SigningKey::derive(&master, tenant, id)
                .secret()
                .expose_secret()
                .to_owned()
        };
        assert_eq!(secret(a), secret(a));
        assert_ne!(secret(a), secret(b));
    }
}
