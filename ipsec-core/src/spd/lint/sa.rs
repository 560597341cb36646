//! Lint checks of the SAs a policy file defines, by RFC 8221 (the algorithm
//! requirements and usage guidance for ESP). Each looks at one SA (and, for
//! `sa-not-encrypted`, at the PROTECT policies that use it); none repeats a load check:
//! what a loader refuses (key lengths, algorithm combinations, shared keys, repeated
//! inbound SPIs) is already an `invalid` finding of [`lint_toml`](super::lint_toml).
//!
//! | code | severity | meaning |
//! |------|----------|---------|
//! | `sa-zero-key` | error | an SA's cipher key (without the salt) or integrity key is all zeros |
//! | `sa-not-encrypted` | warning | a PROTECT policy uses an SA with NULL encryption or AES-GMAC: its packets are authenticated, not encrypted |
//! | `sa-cbc` | info | an SA uses AES-CBC with HMAC: RFC 8221 prefers AEAD |
//! | `sa-hmac-sha1` | info | an SA uses HMAC-SHA1-96, which RFC 8221 marks MUST- (on its way out) |
//!
//! Messages name the SA, its algorithms and the field, never a key.

use super::{Finding, Severity};
use crate::crypto::{Cipher, Integrity};
use crate::spd::{Action, Spd};
use std::collections::BTreeMap;

/// True if `key` is not empty and all its bytes are zero (every byte looked at).
fn all_zero(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().fold(0u8, |acc, b| acc | b) == 0
}

/// The SA findings of `spd`: per SA in file order, `sa-zero-key`, `sa-cbc` and
/// `sa-hmac-sha1`; then `sa-not-encrypted` per PROTECT policy in file order.
pub(super) fn findings(spd: &Spd) -> Vec<Finding> {
    let mut out = Vec::new();
    for sa in spd.sas() {
        let cfg = &sa.config;
        let cipher_key = if cfg.cipher.is_combined() && cfg.key.len() > 4 {
            &cfg.key[..cfg.key.len() - 4]
        } else {
            &cfg.key[..]
        };
        for (field, key) in [
            ("key", cipher_key),
            ("integrity_key", &cfg.integrity_key[..]),
        ] {
            if all_zero(key) {
                out.push(Finding::new(
                    Severity::Error,
                    "sa-zero-key",
                    None,
                    format!(
                        "sa {:?}: its {field} is all zeros: anyone can decrypt or forge its \
                         packets; use random keys (IKE negotiates them)",
                        sa.name
                    ),
                ));
            }
        }
        if matches!(cfg.cipher, Cipher::Aes128Cbc | Cipher::Aes256Cbc) {
            out.push(Finding::new(
                Severity::Info,
                "sa-cbc",
                None,
                format!(
                    "sa {:?} uses {} with {}: RFC 8221 keeps AES-CBC for interoperability \
                     but prefers AEAD (aes-128-gcm, aes-256-gcm, chacha20-poly1305): one \
                     pass, one key, a 16-byte ICV, no padding to check; switch when the peer \
                     supports it",
                    sa.name,
                    cfg.cipher.name(),
                    cfg.integrity.map_or("no integrity", Integrity::name),
                ),
            ));
        }
        if cfg.integrity == Some(Integrity::HmacSha1_96) {
            out.push(Finding::new(
                Severity::Info,
                "sa-hmac-sha1",
                None,
                format!(
                    "sa {:?} uses hmac-sha1-96, which RFC 8221 §6 marks MUST- (expected to \
                     be phased out): prefer hmac-sha256-128, or an AEAD cipher",
                    sa.name
                ),
            ));
        }
    }
    let ciphers: BTreeMap<&str, (Cipher, Option<Integrity>)> = spd
        .sas()
        .iter()
        .map(|s| (s.name.as_str(), (s.config.cipher, s.config.integrity)))
        .collect();
    for p in spd.policies() {
        if p.action != Action::Protect {
            continue;
        }
        let clear: Vec<String> = [p.sa_out.as_deref(), p.sa_in.as_deref()]
            .into_iter()
            .flatten()
            .filter_map(|name| {
                let &(cipher, integrity) = ciphers.get(name)?;
                (!cipher.is_confidential()).then(|| match (cipher, integrity) {
                    (Cipher::Null, Some(i)) => {
                        format!("sa {name:?} (null encryption, {})", i.name())
                    }
                    _ => format!("sa {name:?} ({}, integrity only)", cipher.name()),
                })
            })
            .collect();
        if clear.is_empty() {
            continue;
        }
        out.push(Finding::new(
            Severity::Warning,
            "sa-not-encrypted",
            Some(&p.name),
            format!(
                "this PROTECT policy's traffic is authenticated but NOT encrypted: {} \
                 (RFC 8221 keeps NULL encryption and AES-GMAC for integrity-only ESP); anyone \
                 on the path reads it; use aes-128-gcm, aes-256-gcm or chacha20-poly1305 \
                 unless cleartext is intended",
                clear.join(" and ")
            ),
        ));
    }
    out
}
