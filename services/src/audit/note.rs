//! Signed checkpoints: the C2SP `tlog-checkpoint` body (origin, tree size, base64
//! root) in a C2SP `signed-note`, signed with Ed25519 (`ring`, already in the build
//! for NATS TLS). Key ID = the first four bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public
//! key). Keys are written as Go's `golang.org/x/mod/sumdb/note` writes them:
//! verifier `name+hex(id)+base64(0x01 ‖ public key)`, signer
//! `PRIVATE+KEY+name+hex(id)+base64(0x01 ‖ seed)`.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use super::chain::Hash;

/// The signed-note signature type of Ed25519.
const ED25519_TYPE: u8 = 1;
const DASH: &str = "\u{2014} ";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NoteError {
    #[error("the key is not a signed-note Ed25519 key ({0})")]
    BadKey(&'static str),
    #[error("the note is malformed: {0}")]
    Malformed(&'static str),
    #[error("the note carries no signature by {0}")]
    Unsigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    #[error("the checkpoint is malformed: {0}")]
    BadCheckpoint(&'static str),
}

fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519_TYPE]);
    h.update(public);
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// The log's signing key. Never printed: `Debug` shows only its name.
pub struct Signer {
    name: String,
    id: [u8; 4],
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.name)
    }
}

impl Signer {
    /// A new key named `name`, in the signer form, for first-run setups.
    pub fn generate(name: &str) -> Result<String, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadKey("names have no spaces or '+'"));
        }
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| NoteError::BadKey("seed refused"))?;
        let id = key_id(name, pair.public_key().as_ref());
        let mut data = vec![ED25519_TYPE];
        data.extend_from_slice(&seed);
        Ok(format!(
            "PRIVATE+KEY+{name}+{}+{}",
            super::chain::to_hex(&id),
            STANDARD.encode(data)
        ))
    }

    /// Reads `PRIVATE+KEY+name+id+base64(0x01 ‖ seed)`; the id must match.
    pub fn parse(text: &str) -> Result<Signer, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or(NoteError::BadKey("expected PRIVATE+KEY+name+id+key"))?;
        // Base64 may hold '+': the key is everything after the second one.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("expected PRIVATE+KEY+name+id+key"));
        };
        if !valid_name(name) {
            return Err(NoteError::BadKey("names have no spaces or '+'"));
        }
        let data = STANDARD
            .decode(data)
            .map_err(|_| NoteError::BadKey("the key is not base64"))?;
        let seed = match data.split_first() {
            Some((&ED25519_TYPE, seed)) if seed.len() == 32 => seed,
            _ => return Err(NoteError::BadKey("expected 0x01 and a 32-byte seed")),
        };
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| NoteError::BadKey("seed refused"))?;
        let key_id = key_id(name, pair.public_key().as_ref());
        if super::chain::to_hex(&key_id) != id.to_ascii_lowercase() {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(Signer {
            name: name.to_string(),
            id: key_id,
            pair,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key an auditor keeps: `name+id+base64(0x01 ‖ public key)`.
    pub fn verifier_key(&self) -> String {
        let mut data = vec![ED25519_TYPE];
        data.extend_from_slice(self.pair.public_key().as_ref());
        format!(
            "{}+{}+{}",
            self.name,
            super::chain::to_hex(&self.id),
            STANDARD.encode(data)
        )
    }

    /// `text` (ending in a newline) as a signed note with this key's signature line.
    pub fn sign(&self, text: &str) -> String {
        let signature = self.pair.sign(text.as_bytes());
        let mut data = self.id.to_vec();
        data.extend_from_slice(signature.as_ref());
        format!("{text}\n{DASH}{} {}\n", self.name, STANDARD.encode(data))
    }
}

/// An auditor's copy of the log's public key.
#[derive(Clone, Debug, PartialEq)]
pub struct Verifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl Verifier {
    /// Reads `name+id+base64(0x01 ‖ public key)`; the id must match.
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadKey("expected name+id+key"));
        };
        if !valid_name(name) {
            return Err(NoteError::BadKey("names have no spaces or '+'"));
        }
        let data = STANDARD
            .decode(data)
            .map_err(|_| NoteError::BadKey("the key is not base64"))?;
        let public = match data.split_first() {
            Some((&ED25519_TYPE, public)) if public.len() == 32 => public.to_vec(),
            _ => return Err(NoteError::BadKey("expected 0x01 and a 32-byte key")),
        };
        let key_id = key_id(name, &public);
        if super::chain::to_hex(&key_id) != id.to_ascii_lowercase() {
            return Err(NoteError::BadKey("the key id does not match the key"));
        }
        Ok(Verifier {
            name: name.to_string(),
            id: key_id,
            public,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The note's text, if this key signed it. Other keys' signatures are ignored,
    /// as the spec requires.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::Malformed("control characters"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        if signatures.is_empty() || !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "signature lines must end in a newline",
            ));
        }
        let mut found = false;
        for line in signatures.lines() {
            let rest = line.strip_prefix(DASH).ok_or(NoteError::Malformed(
                "a signature line must start with an em dash",
            ))?;
            let (name, data) = rest.split_once(' ').ok_or(NoteError::Malformed(
                "a signature line is name and signature",
            ))?;
            let data = STANDARD
                .decode(data)
                .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
            if name != self.name || data.len() < 4 || data[..4] != self.id {
                continue;
            }
            let ok = UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &data[4..])
                .is_ok();
            if !ok {
                return Err(NoteError::BadSignature(self.name.clone()));
            }
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(NoteError::Unsigned(self.name.clone()))
        }
    }
}

/// The body of a C2SP checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// `origin\nsize\nbase64(root)\n`.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Reads a checkpoint body (extension lines are allowed and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(NoteError::BadCheckpoint("fewer than three lines"));
        };
        if origin.is_empty() {
            return Err(NoteError::BadCheckpoint("empty origin"));
        }
        let canonical = size == "0" || (!size.starts_with('0') && !size.is_empty());
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| canonical && size.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(NoteError::BadCheckpoint(
                "the tree size is not a decimal number",
            ))?;
        let root = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or(NoteError::BadCheckpoint(
                "the root is not 32 bytes of base64",
            ))?;
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }

    /// Opens a signed checkpoint with `verifier`; the origin must be the key's name.
    pub fn open(note: &str, verifier: &Verifier) -> Result<Checkpoint, NoteError> {
        let checkpoint = Checkpoint::parse(verifier.open(note)?)?;
        if checkpoint.origin != verifier.name {
            return Err(NoteError::BadCheckpoint("the origin is not the key's name"));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_with_no_other() {
        let signer = Signer::parse(&Signer::generate("circle.example/log").unwrap()).unwrap();
        let checkpoint = Checkpoint {
            origin: "circle.example/log".into(),
            size: 42,
            root: [7; 32],
        };
        let note = signer.sign(&checkpoint.text());
        assert!(note.starts_with("circle.example/log\n42\nBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n\n\u{2014} circle.example/log "));
        let verifier = Verifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(Checkpoint::open(&note, &verifier).unwrap(), checkpoint);
        assert!(format!("{signer:?}").contains("circle.example/log"));
        assert!(!format!("{signer:?}").contains("PRIVATE"));

        let tampered = note.replace("\n42\n", "\n43\n");
        assert_eq!(
            Checkpoint::open(&tampered, &verifier),
            Err(NoteError::BadSignature("circle.example/log".into()))
        );
        let other = Signer::parse(&Signer::generate("circle.example/log").unwrap()).unwrap();
        let other = Verifier::parse(&other.verifier_key()).unwrap();
        assert!(matches!(
            Checkpoint::open(&note, &other),
            Err(NoteError::Unsigned(_))
        ));
        for junk in [
            "",
            "\n\n",
            "a\n\n— x\n",
            "x\n1\nAA==\n\n— circle.example/log !!\n",
        ] {
            assert!(Checkpoint::open(junk, &verifier).is_err(), "{junk:?}");
        }
    }

    /// The key id of the signed-note spec's worked example (`PeterNeumann`, from
    /// golang.org/x/mod/sumdb/note's tests): the derivation matches Go's.
    #[test]
    fn key_ids_and_key_forms_match_the_go_note_package() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let verifier = Verifier::parse(vkey).unwrap();
        assert_eq!(verifier.name(), "PeterNeumann");
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let signer = Signer::parse(skey).unwrap();
        assert_eq!(signer.verifier_key(), vkey);
        let note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let text = verifier.open(note).unwrap();
        assert!(text.starts_with("If you think cryptography"));
        assert_eq!(signer.sign(text), note, "Ed25519 is deterministic");
        assert!(Verifier::parse(
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
        )
        .is_err());
    }
}
