//! Published known-answer vectors (`tests/vectors/rfc_vectors.json`, see its README):
//! RFC 7634 Appendix A (ChaCha20-Poly1305 ESP), draft-mcgrew-gcm-test-01 section 4
//! (AES-GCM / AES-GMAC ESP packets), RFC 4868 section 2.7 (HMAC-SHA-256/384/512) and
//! RFC 2202 section 3 with the RFC 2404 96-bit truncation (HMAC-SHA-1-96).
//!
//! Our AEAD IV is always the 64-bit sequence number (counter-based IVs). None of the
//! published ESP packets uses IV = sequence number, so our SA cannot reproduce them in
//! the encrypt direction; those vectors are run through the decrypt direction only.
//! The encrypt direction of the HMAC algorithms is checked with the ICV of NULL+HMAC
//! packets, which must equal the (RFC 4868-verified) truncated HMAC over the ESP bytes.

mod common;

use common::{T0, hex, hmac_full, hmac_trunc, ipv4, to_hex};
use ipsec_core::{Cipher, Direction, Integrity, Mode, SaConfig, SecurityAssociation};
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/rfc_vectors.json");

fn doc() -> Value {
    serde_json::from_str(VECTORS).expect("valid JSON")
}

fn field(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("missing string field {k}"))
        .to_owned()
}

/// Wraps an ESP packet (SPI .. ICV) in an IPv4 header with protocol 50.
fn wrap_esp(esp: &[u8]) -> Vec<u8> {
    ipv4([192, 0, 2, 1], [192, 0, 2, 2], 50, 0, esp)
}

/// Splits an ESP plaintext (payload || padding || pad length || next header).
fn split_trailer(pt: &[u8]) -> (&[u8], u8) {
    let nh = pt[pt.len() - 1];
    let pad = usize::from(pt[pt.len() - 2]);
    (&pt[..pt.len() - 2 - pad], nh)
}

/// An inbound SA whose window top is just below `seq` (so ESN inference finds `seq`).
fn inbound(
    spi: u32,
    mode: Mode,
    cipher: Cipher,
    key: &[u8],
    esn: bool,
    seq: u64,
) -> SecurityAssociation {
    let mut cfg = SaConfig::new(spi, Direction::Inbound, mode, cipher, key);
    cfg.esn(esn).seq(seq - 1);
    SecurityAssociation::new(cfg, T0).expect("inbound SA")
}

// RFC 7634, Appendix A "ESP Example": ChaCha20-Poly1305 ESP in tunnel mode, SPI 0x01020304,
// sequence number 5, IV 0x1011121314151617, inner IPv4 ICMP echo. The IV is not the
// sequence number, so only the decrypt direction can be run through our SA.
#[test]
fn rfc7634_appendix_a_esp_decrypts() {
    let d = doc();
    let v = d["rfc7634"]
        .as_array()
        .expect("rfc7634")
        .iter()
        .find(|v| v["kind"] == "esp")
        .expect("Appendix A record");
    let spi = u32::from_str_radix(&field(v, "spi"), 16).expect("spi");
    let seq = u64::from_str_radix(&field(v, "seq"), 16).expect("seq");
    assert_ne!(field(v, "iv"), format!("{seq:016x}"), "IV is not the seq");
    let mut sa = inbound(
        spi,
        Mode::Tunnel,
        Cipher::ChaCha20Poly1305,
        &hex(&field(v, "key_with_salt")),
        false,
        seq,
    );
    let pkt = wrap_esp(&hex(&field(v, "esp_packet")));
    let out = common::decrypt(&mut sa, &pkt).expect("RFC 7634 A packet decrypts");
    assert_eq!(to_hex(&out), field(v, "inner_packet"));
    assert_eq!(sa.stats().packets, 1);

    // One flipped tag bit: rejected.
    let mut bad = pkt.clone();
    *bad.last_mut().expect("non-empty") ^= 1;
    let mut sa2 = inbound(
        spi,
        Mode::Tunnel,
        Cipher::ChaCha20Poly1305,
        &hex(&field(v, "key_with_salt")),
        false,
        seq,
    );
    assert_eq!(
        common::decrypt(&mut sa2, &bad),
        Err(ipsec_core::Error::AuthenticationFailed)
    );
}

// draft-mcgrew-gcm-test-01, Section 4 "Test Cases", cases 1..17 (AES-GCM ESP and, in case
// 15, AES-GMAC ESP). The draft's packets have no IP header and several payloads are not
// IP packets, so each is wrapped in an IPv4 header (protocol 50) and decrypted by a
// transport-mode SA: the restored packet is that header with protocol = the trailer's
// next header and the ESP payload after it. None of the draft's IVs is the sequence
// number, so the encrypt direction cannot be reproduced by our SA (IV = seq).
// Skipped: case 7 (AES-192: not offered) and case 4 (SPI 0, which RFC 4303 §2.1
// reserves and our SA configuration refuses; checked to be refused).
#[test]
fn draft_mcgrew_gcm_test_01_packets_decrypt() {
    let d = doc();
    let mut failures = Vec::new();
    let mut ran = 0;
    for v in d["gcm_test_01"].as_array().expect("gcm_test_01") {
        let case = v["case"].as_u64().expect("case");
        let Some(cipher_name) = v["cipher"].as_str() else {
            // Case 7: a 192-bit key; AES-192 is not one of our ciphers.
            assert_eq!(case, 7);
            continue;
        };
        let cipher = Cipher::from_name(cipher_name).expect("cipher");
        let spi = u32::from_str_radix(&field(v, "spi"), 16).expect("spi");
        let esn = v["esn"].as_bool().expect("esn");
        let seq = u64::from_str_radix(&field(v, "seq"), 16).expect("seq");
        let key = hex(&field(v, "key_with_salt"));
        if spi < 256 {
            // Case 4: SPI 0 is reserved (RFC 4303 §2.1): the SA must refuse it.
            assert_eq!(case, 4);
            let cfg = SaConfig::new(spi, Direction::Inbound, Mode::Transport, cipher, &key);
            assert!(SecurityAssociation::new(cfg, T0).is_err());
            continue;
        }
        let iv = field(v, "iv");
        assert_ne!(
            iv,
            format!("{seq:016x}"),
            "case {case}: IV = seq, test encrypt"
        );
        let (outer, expect) = draft_packet(v);

        let mut sa = inbound(spi, Mode::Transport, cipher, &key, esn, seq);
        ran += 1;
        match common::decrypt(&mut sa, &outer) {
            Ok(out) if out == expect => {
                if sa.seq() != seq {
                    failures.push(format!(
                        "case {case}: highest {:#x}, want {seq:#x}",
                        sa.seq()
                    ));
                }
            }
            Ok(out) => failures.push(format!(
                "case {case}: got {} want {}",
                to_hex(&out),
                to_hex(&expect)
            )),
            Err(e) => failures.push(format!("case {case}: {e}")),
        }
        // Without ESN the high bits would be missing from the AAD: ESN cases must fail.
        if esn && seq >> 32 != 0 {
            let mut wrong = inbound(
                spi,
                Mode::Transport,
                cipher,
                &key,
                false,
                (seq & 0xffff_ffff).max(1),
            );
            if common::decrypt(&mut wrong, &outer).is_ok() {
                failures.push(format!("case {case}: accepted without the ESN high bits"));
            }
        }
    }
    assert_eq!(ran, 15, "cases run (17 minus 4 and 7)");
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// A draft-mcgrew-gcm-test-01 packet wrapped in an IPv4 header (protocol 50), and the
/// packet a transport-mode SA restores from it.
fn draft_packet(v: &Value) -> (Vec<u8>, Vec<u8>) {
    let packet = hex(&field(v, "packet"));
    // The ESP plaintext: GCM prints it; for GMAC it is the AAD after SPI||seq||IV.
    let esp_plain = if v["gmac"].as_bool().expect("gmac") {
        hex(&field(v, "aad"))[16..].to_vec()
    } else {
        hex(&field(v, "plaintext"))
    };
    let (payload, nh) = split_trailer(&esp_plain);
    let outer = wrap_esp(&packet);
    let mut expect = outer[..20].to_vec();
    expect[9] = nh;
    expect.extend_from_slice(payload);
    let total = expect.len() as u16;
    expect[2..4].copy_from_slice(&total.to_be_bytes());
    common::fix_ipv4_checksum(&mut expect);
    (outer, expect)
}

// The ESN packets of draft-mcgrew-gcm-test-01 (sequence numbers with the high 32 bits
// set, three of them above 2^63-1, which no TOML integer holds) restored from an SA
// file: `seq` written as a hexadecimal string, the window top just below the packet's.
#[test]
fn draft_mcgrew_gcm_test_01_esn_packets_load_from_an_sa_file() {
    let d = doc();
    let mut ran = 0;
    let mut above_i64 = 0;
    for v in d["gcm_test_01"].as_array().expect("gcm_test_01") {
        let seq = u64::from_str_radix(&field(v, "seq"), 16).expect("seq");
        if !v["esn"].as_bool().expect("esn") || seq >> 32 == 0 {
            continue;
        }
        let case = v["case"].as_u64().expect("case");
        let text = format!(
            "[[sa]]\nname = \"case-{case}\"\nspi = 0x{}\ndirection = \"inbound\"\n\
             mode = \"transport\"\ncipher = \"{}\"\nkey = \"{}\"\nesn = true\n\
             seq = \"0x{:016x}\"\n",
            field(v, "spi"),
            field(v, "cipher"),
            field(v, "key_with_salt"),
            seq - 1
        );
        let named = ipsec_core::sa_file::parse_sa_file(&text)
            .unwrap_or_else(|e| panic!("case {case}: {e}"))
            .remove(0);
        let mut sa = SecurityAssociation::new(named.config, T0).expect("SA");
        assert_eq!(sa.seq(), seq - 1, "case {case}");
        let (outer, expect) = draft_packet(v);
        let out = common::decrypt(&mut sa, &outer).unwrap_or_else(|e| panic!("case {case}: {e}"));
        assert_eq!(to_hex(&out), to_hex(&expect), "case {case}");
        assert_eq!(sa.seq(), seq, "case {case}");
        ran += 1;
        above_i64 += usize::from(seq > i64::MAX as u64);
    }
    assert_eq!(
        (ran, above_i64),
        (9, 3),
        "cases 1, 5, 6, 9, 10, 11, 14, 16, 17"
    );
}

// RFC 4868 Section 2.7 (2.7.1 PRF vectors, 2.7.2.1-3 authenticator vectors). Checks that
// the reference HMAC used below (the `hmac` + `sha2` crates) gives the published values
// and truncations; then our NULL+HMAC ICV (which the SA computes) is compared with it.
#[test]
fn rfc4868_vectors_hold_for_reference_hmac() {
    let d = doc();
    let list = d["rfc4868"].as_array().expect("rfc4868");
    assert_eq!(list.len(), 30);
    for v in list {
        let id = field(v, "id");
        let full = hmac_full(
            &field(v, "hash"),
            &hex(&field(v, "key")),
            &hex(&field(v, "data")),
        );
        assert_eq!(to_hex(&full), field(v, "output"), "{id}");
        if v["kind"] == "auth" {
            let alg = Integrity::from_name(&field(v, "integrity")).expect("integrity");
            let bits = v["icv_bits"].as_u64().expect("icv_bits") as usize;
            assert_eq!(alg.icv_len() * 8, bits, "{id}: our ICV length");
            let icv = hmac_trunc(alg, &hex(&field(v, "key")), &hex(&field(v, "data")));
            assert_eq!(to_hex(&icv), field(v, "icv"), "{id}");
        }
    }
}

// RFC 2202 Section 3 (HMAC-SHA-1 test cases 1-7) with the RFC 2404 96-bit truncation.
#[test]
fn rfc2202_rfc2404_vectors_hold_for_reference_hmac() {
    let d = doc();
    for v in d["rfc2404"].as_array().expect("rfc2404") {
        let id = field(v, "id");
        let full = hmac_full("sha1", &hex(&field(v, "key")), &hex(&field(v, "data")));
        assert_eq!(to_hex(&full), field(v, "output"), "{id}");
        let icv = hmac_trunc(
            Integrity::HmacSha1_96,
            &hex(&field(v, "key")),
            &hex(&field(v, "data")),
        );
        assert_eq!(to_hex(&icv), field(v, "icv"), "{id}");
    }
}

/// Encrypts a packet with a NULL+`alg` SA keyed with `key` and checks that its ICV is
/// the truncated HMAC over SPI .. next header (with the ESN high bits appended when on).
fn null_hmac_icv_matches(alg: Integrity, key: &[u8], esn: bool, label: &str) {
    let seq0: u64 = if esn { (7 << 32) | 0xffff_fff0 } else { 41 };
    let mut cfg = SaConfig::new(
        0x4242,
        Direction::Outbound,
        Mode::Transport,
        Cipher::Null,
        &[],
    );
    cfg.integrity(alg, key).esn(esn).seq(seq0);
    let mut out = SecurityAssociation::new(cfg, T0).expect("outbound");
    let mut cfg = SaConfig::new(
        0x4242,
        Direction::Inbound,
        Mode::Transport,
        Cipher::Null,
        &[],
    );
    cfg.integrity(alg, key).esn(esn).seq(seq0);
    let mut inb = SecurityAssociation::new(cfg, T0).expect("inbound");
    let plain = common::inner_v4(37, 0);
    let prot = common::encrypt(&mut out, &plain).expect("encrypt");
    let esp = &prot[20..];
    let icv_len = alg.icv_len();
    let (covered, icv) = esp.split_at(esp.len() - icv_len);
    let mut input = covered.to_vec();
    if esn {
        input.extend_from_slice(&(((seq0 + 1) >> 32) as u32).to_be_bytes());
    }
    assert_eq!(
        to_hex(icv),
        to_hex(&hmac_trunc(alg, key, &input)),
        "{label}: NULL+{} ICV (esn {esn})",
        alg.name()
    );
    // And a packet whose ICV we computed ourselves is accepted.
    let mut forged = covered.to_vec();
    forged.extend_from_slice(&hmac_trunc(alg, key, &input));
    assert_eq!(
        common::decrypt(&mut inb, &wrap_esp_like(&prot, &forged)).expect("decrypt"),
        plain,
        "{label}"
    );
}

/// `prot`'s IPv4 header in front of `esp`.
fn wrap_esp_like(prot: &[u8], esp: &[u8]) -> Vec<u8> {
    let mut p = prot[..20].to_vec();
    p.extend_from_slice(esp);
    p
}

// RFC 4868 Section 2.7.2 authenticator keys (32/48/64 octets, the key lengths RFC 4868
// §2.1.1 requires) and RFC 2202 §3 cases 1, 3 and 5 (20-octet keys as RFC 2404 requires),
// used as ESP integrity keys of NULL-encryption SAs (RFC 2410).
#[test]
fn null_hmac_icv_is_the_truncated_hmac_with_rfc_keys() {
    let d = doc();
    let mut n = 0;
    for v in d["rfc4868"]
        .as_array()
        .expect("rfc4868")
        .iter()
        .chain(d["rfc2404"].as_array().expect("rfc2404"))
    {
        let Some(name) = v["integrity"].as_str() else {
            continue; // PRF vectors
        };
        let alg = Integrity::from_name(name).expect("integrity");
        let key = hex(&field(v, "key"));
        if key.len() != alg.key_len() {
            continue; // e.g. the 131-octet keys of the "larger than block" cases
        }
        for esn in [false, true] {
            null_hmac_icv_matches(alg, &key, esn, &field(v, "id"));
        }
        n += 1;
    }
    assert!(n >= 9, "only {n} vectors had a usable key length");
}
