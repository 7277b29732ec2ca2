//! Gossip encryption: AES-256-GCM per datagram, and the keyring that rotates keys.
//!
//! Every gossip datagram the core builds (see [`super::wire`]) is sealed whole before it
//! is sent and opened before the core sees it:
//!
//! ```text
//!  0         1                       13                          len-16        len
//!  +---------+-----------------------+-----------------------------+-------------+
//!  | version | nonce (12 bytes)      | ciphertext (len - 29 bytes) | tag (16)    |
//!  +---------+-----------------------+-----------------------------+-------------+
//!
//!  version     1 (VERSION); authenticated as GCM's associated data, so it cannot be
//!              altered to make a receiver misread the rest
//!  nonce       12 random bytes drawn from the caller's cryptographic RNG per datagram
//!  ciphertext  the plaintext gossip datagram ("CG" | version | messages), same length
//!  tag         GCM's 16-byte authentication tag over version and ciphertext
//! ```
//!
//! A sealed datagram is [`OVERHEAD`] (29) bytes longer than the plaintext: with the
//! core's default 1,400-byte limit it is at most 1,429 bytes, under a 1,500-byte
//! Ethernet MTU with IPv4/IPv6 and UDP headers.
//!
//! # Keys and rotation
//! A [`Keyring`] holds every installed key; the *primary* seals, and every installed key
//! is tried to open (primary first, as nearly all traffic uses it). Rotation without a
//! moment of lost traffic is Consul's: install the new key everywhere, make it primary
//! everywhere, remove the old key everywhere. Between the second and third step a node
//! still opens datagrams sealed with the old key by nodes that have not switched yet.
//!
//! # Why random nonces, and their limit
//! GCM's security rests on a nonce never repeating under one key. The nodes of a pool
//! share the key and have no coordinated counter, so nonces are 96 random bits per
//! datagram (as memberlist does). NIST SP 800-38D bounds random nonces to 2^32
//! datagrams per key for a collision chance under 2^-32; a 10,000-node pool at the
//! target of 5 datagrams/s per node reaches that in about a day, and after a year the
//! chance of any repeat is about 2^-16. Rotate keys (`cairn keygen`, then the steps
//! above) on a schedule that keeps the count well below the bound.
//!
//! The module is pure: no RNG of its own (the caller passes one: a sans-IO core has no
//! global randomness), no IO. Opening never panics, whatever the input.
//!
//! Not covered: replay. A recorded datagram opens again; the gossip protocol tolerates
//! this (news is ordered by incarnation, so old news is recognised as old), as
//! memberlist's does.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use base64::Engine as _;
use rand::CryptoRng;

/// Version of the sealed-datagram layout (the first byte).
pub const VERSION: u8 = 1;
/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of a GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to its plaintext: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A 32-byte AES-256 key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a key string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the encryption key is not valid base64 ({0}); generate one with `cairn keygen`")]
    Base64(String),
    #[error(
        "the encryption key decodes to {len} bytes; it must be {KEY_LEN} bytes (AES-256), \
         44 characters of base64; generate one with `cairn keygen`"
    )]
    WrongLength { len: usize },
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A new random key from `rng`, which must be cryptographically secure (an RNG
    /// seeded from the operating system).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Key {
        let mut k = [0u8; KEY_LEN];
        rng.fill_bytes(&mut k);
        Key(k)
    }

    /// Parses standard base64 (with padding, as `cairn keygen` and `consul keygen`
    /// print it). Surrounding whitespace is ignored: keys are often pasted from files.
    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        let arr: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength { len: bytes.len() })?;
        Ok(Key(arr))
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

/// Why a datagram could not be opened. It is dropped; no state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("encrypted datagram of {len} bytes is shorter than the {OVERHEAD}-byte minimum")]
    TooShort { len: usize },
    #[error(
        "encrypted datagram version {0} is not supported (this node speaks {VERSION}), \
         or the datagram is not encrypted"
    )]
    UnknownVersion(u8),
    #[error(
        "no installed key (of {keys}) authenticates the datagram: the sender uses a \
         different encryption key, or the datagram was altered"
    )]
    Authentication { keys: usize },
}

/// Why a keyring operation was refused. Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("the key is not installed in the keyring; install it first")]
    NotInstalled,
    #[error("the primary key cannot be removed; make another key primary first")]
    RemovePrimary,
}

struct Entry {
    key: Key,
    cipher: Aes256Gcm,
}

/// The installed keys, the first of them primary. See the [module docs](self).
pub struct Keyring {
    /// Index 0 is the primary: it seals, and it is tried first when opening.
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.entries.len())
            .finish()
    }
}

impl Clone for Keyring {
    fn clone(&self) -> Keyring {
        Keyring {
            entries: self.entries.iter().map(|e| entry(e.key.clone())).collect(),
        }
    }
}

fn entry(key: Key) -> Entry {
    Entry {
        cipher: Aes256Gcm::new(&key.0.into()),
        key,
    }
}

impl Keyring {
    /// A keyring holding `primary` alone.
    pub fn new(primary: Key) -> Keyring {
        Keyring {
            entries: vec![entry(primary)],
        }
    }

    /// Installs `key` for opening (it does not seal until [`Keyring::use_key`]). Returns
    /// false if it was already installed (nothing changed).
    pub fn install(&mut self, key: Key) -> bool {
        if self.position(&key).is_some() {
            return false;
        }
        self.entries.push(entry(key));
        true
    }

    /// Makes an installed key the primary: it seals from now on.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        let i = self.position(key).ok_or(KeyringError::NotInstalled)?;
        // Keep the others in installation order behind it.
        let e = self.entries.remove(i);
        self.entries.insert(0, e);
        Ok(())
    }

    /// Removes a key that is not the primary: datagrams sealed with it are refused.
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        match self.position(key) {
            None => Err(KeyringError::NotInstalled),
            Some(0) => Err(KeyringError::RemovePrimary),
            Some(i) => {
                self.entries.remove(i);
                Ok(())
            }
        }
    }

    pub fn primary(&self) -> &Key {
        &self.entries[0].key
    }

    /// Every installed key, the primary first.
    pub fn keys(&self) -> Vec<Key> {
        self.entries.iter().map(|e| e.key.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a keyring holds at least its primary.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn position(&self, key: &Key) -> Option<usize> {
        self.entries.iter().position(|e| e.key == *key)
    }

    /// Seals `plaintext` with the primary key and a nonce drawn from `rng`, which must be
    /// cryptographically secure (see the module docs on nonces).
    pub fn encrypt<R: CryptoRng + ?Sized>(&self, rng: &mut R, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.encrypt_with_nonce(nonce, plaintext)
    }

    /// Seals `plaintext` with the primary key and the given nonce. The caller must never
    /// use a nonce twice with one key; [`Keyring::encrypt`] draws them at random.
    pub fn encrypt_with_nonce(&self, nonce: [u8; NONCE_LEN], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let body = 1 + NONCE_LEN;
        let tag = self.entries[0]
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[VERSION], &mut out[body..])
            // aes-gcm fails only for plaintexts over 2^36 bytes.
            .expect("a datagram is far below GCM's length limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a sealed datagram with whichever installed key authenticates it (the
    /// primary is tried first). Never panics; any input that is not a datagram sealed
    /// with an installed key is an error.
    pub fn decrypt(&self, packet: &[u8]) -> Result<Vec<u8>, DecryptError> {
        if packet.is_empty() {
            return Err(DecryptError::TooShort { len: 0 });
        }
        if packet[0] != VERSION {
            return Err(DecryptError::UnknownVersion(packet[0]));
        }
        if packet.len() < OVERHEAD {
            return Err(DecryptError::TooShort { len: packet.len() });
        }
        let nonce = Nonce::from_slice(&packet[1..1 + NONCE_LEN]);
        let (body, tag) = packet[1 + NONCE_LEN..].split_at(packet.len() - OVERHEAD);
        let tag = Tag::from_slice(tag);
        let mut buf = Vec::with_capacity(body.len());
        for e in &self.entries {
            buf.clear();
            buf.extend_from_slice(body);
            if e.cipher
                .decrypt_in_place_detached(nonce, &packet[..1], &mut buf, tag)
                .is_ok()
            {
                return Ok(buf);
            }
        }
        Err(DecryptError::Authentication {
            keys: self.entries.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn key(b: u8) -> Key {
        Key::from_bytes([b; KEY_LEN])
    }

    const PLAIN: &[u8] = b"CG\x01\x01\x04\x00\x07\x00\x00\x00";

    #[test]
    fn a_sealed_datagram_has_the_documented_layout_and_opens() {
        let ring = Keyring::new(key(1));
        let nonce = [9u8; NONCE_LEN];
        let sealed = ring.encrypt_with_nonce(nonce, PLAIN);
        assert_eq!(sealed.len(), PLAIN.len() + OVERHEAD);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(&sealed[1..13], &nonce);
        assert_ne!(
            &sealed[13..13 + PLAIN.len()],
            PLAIN,
            "the body is encrypted"
        );
        assert_eq!(ring.decrypt(&sealed).unwrap(), PLAIN);
        // The same inputs seal to the same bytes: the only randomness is the nonce.
        assert_eq!(ring.encrypt_with_nonce(nonce, PLAIN), sealed);
    }

    #[test]
    fn each_datagram_gets_a_fresh_nonce_from_the_callers_rng() {
        let ring = Keyring::new(key(1));
        let mut rng = StdRng::seed_from_u64(7);
        let a = ring.encrypt(&mut rng, PLAIN);
        let b = ring.encrypt(&mut rng, PLAIN);
        assert_ne!(a[1..13], b[1..13]);
        assert_ne!(a, b);
        assert_eq!(ring.decrypt(&a).unwrap(), PLAIN);
        assert_eq!(ring.decrypt(&b).unwrap(), PLAIN);
        // Replayable from the seed.
        let mut again = StdRng::seed_from_u64(7);
        assert_eq!(ring.encrypt(&mut again, PLAIN), a);
    }

    #[test]
    fn an_empty_plaintext_round_trips() {
        let ring = Keyring::new(key(1));
        let sealed = ring.encrypt_with_nonce([0; NONCE_LEN], b"");
        assert_eq!(sealed.len(), OVERHEAD);
        assert_eq!(ring.decrypt(&sealed).unwrap(), b"");
    }

    #[test]
    fn a_datagram_sealed_with_another_key_fails_authentication() {
        let sealed = Keyring::new(key(1)).encrypt_with_nonce([3; NONCE_LEN], PLAIN);
        let other = Keyring::new(key(2));
        assert_eq!(
            other.decrypt(&sealed),
            Err(DecryptError::Authentication { keys: 1 })
        );
    }

    #[test]
    fn altering_any_byte_is_detected() {
        let ring = Keyring::new(key(1));
        let sealed = ring.encrypt_with_nonce([5; NONCE_LEN], PLAIN);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = ring.decrypt(&bad).unwrap_err();
            if i == 0 {
                assert_eq!(err, DecryptError::UnknownVersion(VERSION ^ 1));
            } else {
                assert_eq!(err, DecryptError::Authentication { keys: 1 }, "byte {i}");
            }
        }
    }

    #[test]
    fn short_and_foreign_inputs_are_refused_without_panicking() {
        let ring = Keyring::new(key(1));
        assert_eq!(ring.decrypt(&[]), Err(DecryptError::TooShort { len: 0 }));
        for len in 1..OVERHEAD {
            let mut p = vec![0u8; len];
            p[0] = VERSION;
            assert_eq!(ring.decrypt(&p), Err(DecryptError::TooShort { len }));
        }
        // A plaintext gossip datagram starts with "CG", not a sealed version.
        assert_eq!(ring.decrypt(PLAIN), Err(DecryptError::UnknownVersion(b'C')));
        // Cut a valid datagram anywhere: never accepted.
        let sealed = ring.encrypt_with_nonce([5; NONCE_LEN], PLAIN);
        for cut in 0..sealed.len() {
            assert!(ring.decrypt(&sealed[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn garbage_never_opens_and_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let ring = Keyring::new(key(1));
            prop_assert!(ring.decrypt(&bytes).is_err());
            let mut versioned = bytes.clone();
            if !versioned.is_empty() {
                versioned[0] = VERSION;
            }
            prop_assert!(ring.decrypt(&versioned).is_err());
        }
    }

    #[test]
    fn rotation_install_use_remove() {
        let (old, new) = (key(1), key(2));
        let mut ring = Keyring::new(old.clone());
        let mut rng = StdRng::seed_from_u64(1);
        let sealed_old = ring.encrypt(&mut rng, b"old");

        // Install: the new key opens, the old one still seals.
        assert!(ring.install(new.clone()));
        assert!(
            !ring.install(new.clone()),
            "installing twice changes nothing"
        );
        assert_eq!(ring.keys(), vec![old.clone(), new.clone()]);
        assert_eq!(ring.primary(), &old);
        let still_old = ring.encrypt(&mut rng, b"x");
        assert!(Keyring::new(old.clone()).decrypt(&still_old).is_ok());

        // Use: the new key seals; a node that has only the old key cannot open it, one
        // that installed the new key can; old datagrams still open here.
        ring.use_key(&new).unwrap();
        assert_eq!(ring.primary(), &new);
        assert_eq!(ring.keys(), vec![new.clone(), old.clone()]);
        let sealed_new = ring.encrypt(&mut rng, b"new");
        assert!(Keyring::new(old.clone()).decrypt(&sealed_new).is_err());
        assert_eq!(
            Keyring::new(new.clone()).decrypt(&sealed_new).unwrap(),
            b"new"
        );
        assert_eq!(ring.decrypt(&sealed_old).unwrap(), b"old");

        // Remove: old datagrams are refused from now on.
        assert_eq!(ring.remove(&new), Err(KeyringError::RemovePrimary));
        ring.remove(&old).unwrap();
        assert_eq!(ring.keys(), vec![new.clone()]);
        assert_eq!(
            ring.decrypt(&sealed_old),
            Err(DecryptError::Authentication { keys: 1 })
        );
        assert_eq!(ring.decrypt(&sealed_new).unwrap(), b"new");
        assert_eq!(ring.remove(&old), Err(KeyringError::NotInstalled));
        assert_eq!(ring.use_key(&old), Err(KeyringError::NotInstalled));
    }

    #[test]
    fn keys_parse_from_base64_with_clear_errors() {
        let k = Key::generate(&mut StdRng::seed_from_u64(3));
        let text = k.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::from_base64(&text).unwrap(), k);
        assert_eq!(Key::from_base64(&format!("  {text}\n")).unwrap(), k);

        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 16]);
        assert_eq!(
            Key::from_base64(&short),
            Err(KeyError::WrongLength { len: 16 })
        );
        let long = base64::engine::general_purpose::STANDARD.encode([0u8; 33]);
        assert_eq!(
            Key::from_base64(&long),
            Err(KeyError::WrongLength { len: 33 })
        );
        let e = Key::from_base64("not base64 at all!").unwrap_err();
        assert!(matches!(e, KeyError::Base64(_)), "{e:?}");
        assert!(e.to_string().contains("cairn keygen"));
        assert_eq!(Key::from_base64(""), Err(KeyError::WrongLength { len: 0 }));
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let k = key(0xab);
        let ring = Keyring::new(k.clone());
        let shown = format!("{k:?} {ring:?}");
        assert!(!shown.contains("171"), "{shown}");
        assert!(!shown.contains(&k.to_base64()));
    }
}
