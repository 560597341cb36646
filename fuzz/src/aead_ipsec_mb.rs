//! Differential fuzzing of the optional intel-ipsec-mb backend (`--features ipsec-mb`)
//! against RustCrypto's `aes-gcm` and `chacha20poly1305`: its AES-GCM keys and its
//! ChaCha20-Poly1305 keys (which ESP uses for large packets where the library runs
//! AVX-512 code; this target calls them at every length, on any CPU).
//!
//! Input layout (raw bytes, so that any input is meaningful):
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0 | flags: bit 0 AES-256 (else AES-128); bit 1 tamper; bit 2 ChaCha20-Poly1305 (bit 0 ignored) |
//! | 1..3 | AAD length (little endian, taken modulo the bytes left) |
//! | 3..5 | tamper position (modulo AAD + data + tag length) |
//! | 5 | tamper mask (0 becomes 1) |
//! | 6..18 | nonce |
//! | 18..50 | key (the first 16 or 32 bytes; all 32 for ChaCha20-Poly1305) |
//! | 50.. | AAD, then the data |
//!
//! Missing bytes read as zeros. Checks: both backends seal to the same ciphertext and
//! tag; ipsec-mb opens what it sealed back to the plaintext, and so does RustCrypto;
//! with a bit flipped in the AAD, ciphertext or tag, both refuse, and ipsec-mb leaves
//! zeros where the plaintext would have been.

use aes_gcm::aead::{AeadInOut, KeyInit};
use ipsec_core::crypto::{IpsecMbChaChaKey, IpsecMbGcmKey};

/// The intel-ipsec-mb key under test.
enum Ours {
    Gcm(IpsecMbGcmKey),
    ChaCha(IpsecMbChaChaKey),
}

impl Ours {
    fn seal(&self, nonce: [u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        match self {
            Ours::Gcm(k) => k.seal(nonce, aad, data),
            Ours::ChaCha(k) => k.seal(nonce, aad, data),
        }
    }

    fn open(&self, nonce: [u8; 12], aad: &[u8], data: &mut [u8], tag: &[u8; 16]) -> bool {
        match self {
            Ours::Gcm(k) => k.open(nonce, aad, data, tag),
            Ours::ChaCha(k) => k.open(nonce, aad, data, tag),
        }
    }
}

const HEADER: usize = 50;

fn reference_seal(
    chacha: bool,
    key: &[u8],
    nonce: [u8; 12],
    aad: &[u8],
    data: &mut [u8],
) -> [u8; 16] {
    let tag = if chacha {
        let k = chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
        k.encrypt_inout_detached(&nonce.into(), aad, data.into())
    } else if key.len() == 16 {
        let k = aes_gcm::Aes128Gcm::new_from_slice(key).expect("16-byte key");
        k.encrypt_inout_detached(&nonce.into(), aad, data.into())
    } else {
        let k = aes_gcm::Aes256Gcm::new_from_slice(key).expect("32-byte key");
        k.encrypt_inout_detached(&nonce.into(), aad, data.into())
    };
    tag.expect("fuzz inputs are far below the GCM limits")
        .into()
}

fn reference_open(
    chacha: bool,
    key: &[u8],
    nonce: [u8; 12],
    aad: &[u8],
    data: &mut [u8],
    tag: &[u8; 16],
) -> bool {
    let tag = &(*tag).into();
    if chacha {
        let k = chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
        k.decrypt_inout_detached(&nonce.into(), aad, data.into(), tag)
            .is_ok()
    } else if key.len() == 16 {
        let k = aes_gcm::Aes128Gcm::new_from_slice(key).expect("16-byte key");
        k.decrypt_inout_detached(&nonce.into(), aad, data.into(), tag)
            .is_ok()
    } else {
        let k = aes_gcm::Aes256Gcm::new_from_slice(key).expect("32-byte key");
        k.decrypt_inout_detached(&nonce.into(), aad, data.into(), tag)
            .is_ok()
    }
}

/// The fuzz target body (see the module docs for the input layout).
pub fn aead_ipsec_mb(input: &[u8]) {
    let mut head = [0u8; HEADER];
    let n = input.len().min(HEADER);
    head[..n].copy_from_slice(&input[..n]);
    let rest = &input[n..];
    let chacha = head[0] & 4 != 0;
    let aes256 = head[0] & 1 != 0 || chacha;
    let tamper = head[0] & 2 != 0;
    let aad_len = usize::from(u16::from_le_bytes([head[1], head[2]])) % (rest.len() + 1);
    let position = usize::from(u16::from_le_bytes([head[3], head[4]]));
    let mask = head[5].max(1);
    let nonce: [u8; 12] = head[6..18].try_into().expect("12 bytes");
    let key = &head[18..if aes256 { 50 } else { 34 }];
    let (aad, plain) = rest.split_at(aad_len);

    let ours = if chacha {
        Ours::ChaCha(IpsecMbChaChaKey::new(key).expect("32-byte key"))
    } else {
        Ours::Gcm(IpsecMbGcmKey::new(key).expect("16- or 32-byte key"))
    };
    let mut sealed = plain.to_vec();
    let tag = ours.seal(nonce, aad, &mut sealed);
    let mut expected = plain.to_vec();
    let expected_tag = reference_seal(chacha, key, nonce, aad, &mut expected);
    assert_eq!(sealed, expected, "ciphertexts differ");
    assert_eq!(tag, expected_tag, "tags differ");

    let mut opened = sealed.clone();
    assert!(
        ours.open(nonce, aad, &mut opened, &tag),
        "ipsec-mb refused its own seal"
    );
    assert_eq!(opened, plain, "ipsec-mb opened to other bytes");
    let mut opened = sealed.clone();
    assert!(
        reference_open(chacha, key, nonce, aad, &mut opened, &tag),
        "RustCrypto refused ipsec-mb's seal"
    );
    assert_eq!(opened, plain, "RustCrypto opened to other bytes");

    if tamper {
        let (mut aad, mut data, mut tag) = (aad.to_vec(), sealed, tag);
        let at = position % (aad.len() + data.len() + 16);
        if at < aad.len() {
            aad[at] ^= mask;
        } else if at < aad.len() + data.len() {
            data[at - aad.len()] ^= mask;
        } else {
            tag[at - aad.len() - data.len()] ^= mask;
        }
        let mut theirs = data.clone();
        assert!(
            !reference_open(chacha, key, nonce, &aad, &mut theirs, &tag),
            "RustCrypto accepted a forgery"
        );
        assert!(
            !ours.open(nonce, &aad, &mut data, &tag),
            "ipsec-mb accepted a forgery"
        );
        assert!(
            data.iter().all(|&b| b == 0),
            "ipsec-mb left unauthenticated plaintext"
        );
    }
}
