//! X25519 keys: generation, the base64 text form (as `wg` writes it), key
//! files.
//!
//! Key files hold one base64 line. A private key file that group or others
//! can read is refused: anyone who reads it can impersonate the host.
//!
//! Session keys never come from here: every session's keys come from a Noise
//! IK handshake (`proto::handshake`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};

/// A key that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not base64 of 32 bytes.
    #[error("not a key: expected 44 characters of base64 (32 bytes), as `mpvr genkey` prints")]
    Malformed,
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The private key file is readable by group or others.
    #[error("private key file {path} is readable by group or others (mode {mode:o}): run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// 32 key bytes.
pub type Key = [u8; 32];

/// A fresh private key from the system's random generator.
pub fn generate() -> Result<Key, KeyError> {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).map_err(|_| KeyError::Random)?;
    // Clamp as X25519 does, so the stored key is canonical.
    Ok(StaticSecret::from(k).to_bytes())
}

/// The public key of a private key.
pub fn public(private: &Key) -> Key {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// Base64 text form.
pub fn encode(k: &Key) -> String {
    STANDARD.encode(k)
}

/// Read the base64 text form (surrounding whitespace ignored).
pub fn decode(s: &str) -> Result<Key, KeyError> {
    let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError::Malformed)?;
    bytes.try_into().map_err(|_| KeyError::Malformed)
}

/// Read a private key file, refusing one that group or others can read.
pub fn read_private_key_file(path: &Path) -> Result<Key, KeyError> {
    let shown = path.display().to_string();
    let meta = fs::metadata(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen { path: shown, mode });
    }
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read { path: shown, source })?;
    decode(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(decode(&encode(&a)).unwrap(), a);
        assert!(matches!(decode("short"), Err(KeyError::Malformed)));
        assert_eq!(public(&a), crate::proto::Identity::new(a).public());
    }

    #[test]
    fn open_key_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("mpvr-keytest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("k");
        fs::write(&f, encode(&generate().unwrap())).unwrap();
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_private_key_file(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_private_key_file(&f).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
