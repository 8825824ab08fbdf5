//! Workspace tokens: 32 random bytes shown once as base64url; only sha256 is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub struct NewToken {
    pub plaintext: String,
    pub hash: Vec<u8>,
    pub prefix: String,
}

pub fn generate() -> NewToken {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let plaintext = URL_SAFE_NO_PAD.encode(bytes);
    NewToken { hash: hash(&plaintext), prefix: plaintext.chars().take(8).collect(), plaintext }
}

pub fn hash(plaintext: &str) -> Vec<u8> {
    Sha256::digest(plaintext.as_bytes()).to_vec()
}

/// Compares secrets without an early exit, so timing does not reveal a matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_and_hash_matches() {
        let a = generate();
        let b = generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert_eq!(a.plaintext.len(), 43);
        assert_eq!(hash(&a.plaintext), a.hash);
        assert!(constant_time_eq(&a.hash, &hash(&a.plaintext)));
        assert!(!constant_time_eq(&a.hash, &b.hash));
    }
}
