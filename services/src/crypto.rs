//! Crypto-shredding. Each client's personal fields are sealed with that client's own
//! AES-256-GCM key; the key is stored outside the log, wrapped by the master key from
//! configuration. Erasure destroys the wrapped key, after which the sealed bytes in
//! the immutable log are noise to everyone.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use circle_events::client::SealedPersonalData;
use serde::{Deserialize, Serialize};

const NONCE_LEN: usize = 12;
/// Associated data of the key check: no client id has a `/`, so no client's sealed
/// value can pass for it.
const KEY_CHECK_CONTEXT: &str = "circle/key-check";
const KEY_CHECK_TEXT: &[u8] = b"circle master key check v1";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error("a sealed value could not be opened (wrong key or tampered data)")]
    Unreadable,
}

/// Personal fields of a client. Only ever stored sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PersonalData {
    pub display_name: Option<String>,
    pub contact: Option<String>,
    pub birth_year: Option<i32>,
}

/// Characters in a personal text field (name, contact).
pub const MAX_PERSONAL_FIELD: usize = 200;

impl PersonalData {
    pub fn is_empty(&self) -> bool {
        self == &PersonalData::default()
    }

    /// The limits on personal data, for every way in (the API, `circle import`): the
    /// field refused and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        use chrono::Datelike;
        for (field, value) in [
            ("display_name", &self.display_name),
            ("contact", &self.contact),
        ] {
            if value
                .as_ref()
                .is_some_and(|v| v.trim().is_empty() || v.chars().count() > MAX_PERSONAL_FIELD)
            {
                return Err((
                    field,
                    format!("must be 1 to {MAX_PERSONAL_FIELD} characters"),
                ));
            }
        }
        let this_year = chrono::Utc::now().year();
        if self
            .birth_year
            .is_some_and(|y| !(1900..=this_year).contains(&y))
        {
            return Err(("birth_year", format!("must be from 1900 to {this_year}")));
        }
        Ok(())
    }
}

/// A fresh client key: `key` seals data now, `wrapped` is what the store keeps.
pub struct NewClientKey {
    key: [u8; 32],
    pub wrapped: Vec<u8>,
}

#[derive(Clone)]
pub struct Vault {
    master: Aes256Gcm,
}

impl Vault {
    pub fn from_base64(master_key: &str) -> Result<Vault, VaultError> {
        let bytes = STANDARD
            .decode(master_key.trim())
            .map_err(|_| VaultError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(VaultError::BadMasterKey);
        }
        Ok(Vault {
            master: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// A new random master key, base64-encoded, for first-run setups.
    pub fn generate_master_key() -> String {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        STANDARD.encode(bytes)
    }

    /// A value only this master key opens, stored so a start with another key is
    /// refused ([`Vault::checks`]).
    pub fn key_check(&self) -> Vec<u8> {
        seal_bytes(&self.master, KEY_CHECK_CONTEXT, KEY_CHECK_TEXT)
    }

    /// Whether `sealed` is this master key's check value.
    pub fn checks(&self, sealed: &[u8]) -> bool {
        open_bytes(&self.master, KEY_CHECK_CONTEXT, sealed).is_ok_and(|text| text == KEY_CHECK_TEXT)
    }

    /// Whether this master key opens a client's wrapped key (for stores sealed before
    /// key checks existed).
    pub fn unwraps(&self, wrapped_key: &[u8], client_id: &str) -> bool {
        open_bytes(&self.master, client_id, wrapped_key).is_ok()
    }

    /// A client's wrapped key, opened with this master key and wrapped again with
    /// `to`'s (key rotation); `None` when this master key does not open it.
    pub fn rewrap(&self, to: &Vault, client_id: &str, wrapped_key: &[u8]) -> Option<Vec<u8>> {
        let key = open_bytes(&self.master, client_id, wrapped_key).ok()?;
        Some(seal_bytes(&to.master, client_id, &key))
    }

    pub fn new_client_key(&self, client_id: &str) -> NewClientKey {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        let wrapped = seal_bytes(&self.master, client_id, &key);
        NewClientKey { key, wrapped }
    }

    pub fn seal(
        &self,
        key: &NewClientKey,
        client_id: &str,
        data: &PersonalData,
    ) -> SealedPersonalData {
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key.key));
        let plain = serde_json::to_vec(data).unwrap_or_default();
        SealedPersonalData {
            sealed: STANDARD.encode(seal_bytes(&cipher, client_id, &plain)),
        }
    }

    /// Opens sealed personal data with the client's wrapped key.
    pub fn open(
        &self,
        wrapped_key: &[u8],
        client_id: &str,
        sealed: &SealedPersonalData,
    ) -> Result<PersonalData, VaultError> {
        let cipher = self.client_cipher(wrapped_key, client_id)?;
        let bytes = STANDARD
            .decode(&sealed.sealed)
            .map_err(|_| VaultError::Unreadable)?;
        let plain = open_bytes(&cipher, client_id, &bytes)?;
        serde_json::from_slice(&plain).map_err(|_| VaultError::Unreadable)
    }
}

impl Vault {
    /// Seals a goal title with the client's existing key, bound to the client and the
    /// goal (so it cannot be moved to another goal or read as personal data).
    pub fn seal_goal_title(
        &self,
        wrapped_key: &[u8],
        client_id: &str,
        goal_id: &str,
        title: &str,
    ) -> Result<SealedPersonalData, VaultError> {
        let cipher = self.client_cipher(wrapped_key, client_id)?;
        let context = goal_context(client_id, goal_id);
        Ok(SealedPersonalData {
            sealed: STANDARD.encode(seal_bytes(&cipher, &context, title.as_bytes())),
        })
    }

    pub fn open_goal_title(
        &self,
        wrapped_key: &[u8],
        client_id: &str,
        goal_id: &str,
        sealed: &SealedPersonalData,
    ) -> Result<String, VaultError> {
        let cipher = self.client_cipher(wrapped_key, client_id)?;
        let bytes = STANDARD
            .decode(&sealed.sealed)
            .map_err(|_| VaultError::Unreadable)?;
        let plain = open_bytes(&cipher, &goal_context(client_id, goal_id), &bytes)?;
        String::from_utf8(plain).map_err(|_| VaultError::Unreadable)
    }

    fn client_cipher(&self, wrapped_key: &[u8], client_id: &str) -> Result<Aes256Gcm, VaultError> {
        let key = open_bytes(&self.master, client_id, wrapped_key)?;
        Aes256Gcm::new_from_slice(&key).map_err(|_| VaultError::Unreadable)
    }
}

/// Associated data of a sealed goal title.
fn goal_context(client_id: &str, goal_id: &str) -> String {
    format!("{client_id}/goals/{goal_id}")
}

/// `nonce || ciphertext`, bound to the client id as associated data so a sealed value
/// cannot be moved to another client.
fn seal_bytes(cipher: &Aes256Gcm, client_id: &str, plain: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let mut out = nonce.to_vec();
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: client_id.as_bytes(),
            },
        )
        .unwrap_or_default();
    out.extend(sealed);
    out
}

fn open_bytes(cipher: &Aes256Gcm, client_id: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
    if sealed.len() < NONCE_LEN {
        return Err(VaultError::Unreadable);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: client_id.as_bytes(),
            },
        )
        .map_err(|_| VaultError::Unreadable)
}

/// A random secret for API tokens: `circle_` and 32 random bytes, URL-safe.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("circle_{}", URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_base64(&Vault::generate_master_key()).unwrap()
    }

    #[test]
    fn sealed_personal_data_opens_only_with_its_key_and_client() {
        let vault = vault();
        let key = vault.new_client_key("c1");
        let data = PersonalData {
            display_name: Some("Ada".into()),
            contact: Some("ada@example.org".into()),
            birth_year: Some(1985),
        };
        let sealed = vault.seal(&key, "c1", &data);
        assert!(!sealed.sealed.contains("Ada"));
        assert_eq!(vault.open(&key.wrapped, "c1", &sealed).unwrap(), data);
        assert!(vault.open(&key.wrapped, "c2", &sealed).is_err());
        let other = vault.new_client_key("c1");
        assert!(vault.open(&other.wrapped, "c1", &sealed).is_err());
        let other_master = super::tests::vault();
        assert!(other_master.open(&key.wrapped, "c1", &sealed).is_err());
    }

    #[test]
    fn a_goal_title_opens_only_with_its_clients_key_and_goal() {
        let vault = vault();
        let key = vault.new_client_key("c1");
        let sealed = vault
            .seal_goal_title(&key.wrapped, "c1", "goal1", "Speak up once a session")
            .unwrap();
        assert!(!sealed.sealed.contains("Speak"));
        let open = |client, goal| vault.open_goal_title(&key.wrapped, client, goal, &sealed);
        assert_eq!(open("c1", "goal1").unwrap(), "Speak up once a session");
        assert!(open("c1", "goal2").is_err(), "moved to another goal");
        assert!(open("c2", "goal1").is_err(), "moved to another client");
        let other = vault.new_client_key("c1");
        assert!(vault
            .open_goal_title(&other.wrapped, "c1", "goal1", &sealed)
            .is_err());
    }

    #[test]
    fn a_key_check_passes_only_for_its_master_key() {
        let (one, other) = (vault(), vault());
        let check = one.key_check();
        assert!(one.checks(&check));
        assert!(!other.checks(&check));
        let key = one.new_client_key("c1");
        assert!(one.unwraps(&key.wrapped, "c1") && !other.unwraps(&key.wrapped, "c1"));
    }

    #[test]
    fn a_master_key_must_be_32_bytes() {
        assert!(Vault::from_base64("c2hvcnQ=").is_err());
        assert!(Vault::from_base64("not base64!").is_err());
    }
}
