//! Every way a packet can be refused: tampering (each bit of IV, ciphertext and ICV),
//! wrong SPI, truncation, replay, too old, bad padding, bad next header, dummy packets,
//! hard lifetimes, sequence number overflow, missing headroom/tailroom. Each refusal
//! must return the right error and bump exactly its drop counter by one; at the end of
//! each test the drop counters add up to the number of failed calls.

mod common;

use core::time::Duration;

use aes_gcm::aead::{AeadInOut, KeyInit};
use common::{
    T0, assert_one_drop, config, drops, fix_ipv4_checksum, hmac_trunc, inner_v4, ipv4, pair,
};
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Lifetime, LifetimeLimit, Malformed, Mode,
    PacketBuf, SaConfig, SaEvent, SecurityAssociation,
};

/// The suites the brief names.
const SUITES: [(Cipher, Option<Integrity>); 8] = [
    (Cipher::Aes128Gcm, None),
    (Cipher::Aes256Gcm, None),
    (Cipher::ChaCha20Poly1305, None),
    (Cipher::Aes128Gmac, None),
    (Cipher::Aes256Gmac, None),
    (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128)),
    (Cipher::Aes256Cbc, Some(Integrity::HmacSha512_256)),
    (Cipher::Null, Some(Integrity::HmacSha1_96)),
];

fn suite_name(s: (Cipher, Option<Integrity>)) -> String {
    match s.1 {
        Some(i) => format!("{}+{}", s.0.name(), i.name()),
        None => s.0.name().to_owned(),
    }
}

/// Runs `f` (a decrypt or encrypt call on `sa`), requires an error that `ok` accepts,
/// checks that exactly the error's drop counter grew by one and counts the failure.
fn expect_drop(
    sa: &mut SecurityAssociation,
    failed: &mut u64,
    what: &str,
    f: impl FnOnce(&mut SecurityAssociation) -> Result<Vec<u8>, Error>,
    ok: impl FnOnce(&Error) -> bool,
) -> Error {
    let before = drops(sa);
    let packets = sa.stats().packets;
    let err = match f(sa) {
        Ok(out) => panic!("{what}: accepted ({} bytes out)", out.len()),
        Err(e) => e,
    };
    assert!(ok(&err), "{what}: unexpected error {err:?}");
    assert_one_drop(sa, &before, err.drop_reason(), what);
    assert_eq!(sa.stats().packets, packets, "{what}: packets counter moved");
    *failed += 1;
    err
}

#[test]
fn every_flipped_bit_of_iv_ciphertext_and_icv_fails_authentication() {
    for suite in SUITES {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x1234, Mode::Tunnel, suite);
        let plain = inner_v4(33, 0);
        let prot = common::encrypt(&mut out, &plain).expect("encrypt");
        let mut failed = 0;
        // Everything after the SPI and sequence number: IV, ciphertext (or, for GMAC and
        // NULL, the authenticated clear payload), padding, trailer and ICV.
        for byte in 28..prot.len() {
            for bit in 0..8 {
                let mut bad = prot.clone();
                bad[byte] ^= 1 << bit;
                let what = format!("{name}: byte {byte} bit {bit}");
                expect_drop(
                    &mut inb,
                    &mut failed,
                    &what,
                    |sa| common::decrypt(sa, &bad),
                    |e| *e == Error::AuthenticationFailed,
                );
            }
        }
        assert_eq!(
            inb.stats().dropped(DropReason::AuthFailed),
            failed,
            "{name}"
        );
        assert_eq!(inb.stats().dropped_total(), failed, "{name}");
        // The window did not move: the genuine packet is still accepted.
        assert_eq!(common::decrypt(&mut inb, &prot).expect(&name), plain);
    }
}

#[test]
fn wrong_spi_is_unknown_spi() {
    for suite in SUITES {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x1234, Mode::Tunnel, suite);
        let prot = common::encrypt(&mut out, &inner_v4(20, 0)).expect("encrypt");
        let mut failed = 0;
        for (i, spi) in [0x1235u32, 0x0000_1234 ^ 0x8000_0000, 0, 0xffff_ffff]
            .into_iter()
            .enumerate()
        {
            let mut bad = prot.clone();
            bad[20..24].copy_from_slice(&spi.to_be_bytes());
            let e = expect_drop(
                &mut inb,
                &mut failed,
                &format!("{name}: spi #{i}"),
                |sa| common::decrypt(sa, &bad),
                |e| matches!(e, Error::UnknownSpi { .. }),
            );
            assert_eq!(e, Error::UnknownSpi { spi });
        }
        assert_eq!(inb.stats().dropped(DropReason::UnknownSpi), failed);
        assert_eq!(inb.stats().dropped_total(), failed);
        assert!(common::decrypt(&mut inb, &prot).is_ok(), "{name}");
    }
}

#[test]
fn truncations_are_refused_and_counted_never_panic() {
    for suite in SUITES {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let name = format!("{} {mode:?}", suite_name(suite));
            let (mut out, mut inb) = pair(0x1234, mode, suite);
            let prot = common::encrypt(&mut out, &inner_v4(45, 0)).expect("encrypt");
            let mut failed = 0;
            for cut in 0..prot.len() {
                // The plain cut: the IPv4 total length now lies beyond the bytes present.
                let what = format!("{name}: plain cut to {cut}");
                expect_drop(
                    &mut inb,
                    &mut failed,
                    &what,
                    |sa| common::decrypt(sa, &prot[..cut]),
                    |e| {
                        matches!(
                            e,
                            Error::Malformed(Malformed::Truncated | Malformed::BadIpLength)
                        )
                    },
                );
                // The cut with a consistent IPv4 header, so the ESP parser sees it.
                if cut >= 20 {
                    let mut fixed = prot[..cut].to_vec();
                    fixed[2..4].copy_from_slice(&(cut as u16).to_be_bytes());
                    fix_ipv4_checksum(&mut fixed);
                    let what = format!("{name}: fixed cut to {cut}");
                    expect_drop(
                        &mut inb,
                        &mut failed,
                        &what,
                        |sa| common::decrypt(sa, &fixed),
                        |e| {
                            matches!(
                                e,
                                Error::Malformed(
                                    Malformed::Truncated | Malformed::BadCiphertextLength
                                ) | Error::AuthenticationFailed
                            )
                        },
                    );
                }
            }
            assert_eq!(inb.stats().dropped_total(), failed, "{name}");
            assert!(common::decrypt(&mut inb, &prot).is_ok(), "{name}");
        }
    }
}

#[test]
fn replayed_and_too_old_packets() {
    for suite in SUITES {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x1234, Mode::Tunnel, suite);
        let pkts: Vec<Vec<u8>> = (0..80)
            .map(|i| common::encrypt(&mut out, &inner_v4(10 + i, 0)).expect("encrypt"))
            .collect();
        let mut failed = 0;
        // Deliver 2..=70 (sequence numbers), keeping packet 1 back.
        for p in &pkts[1..70] {
            common::decrypt(&mut inb, p).expect(&name);
        }
        let e = expect_drop(
            &mut inb,
            &mut failed,
            &format!("{name}: replay of seq 70"),
            |sa| common::decrypt(sa, &pkts[69]),
            |e| matches!(e, Error::Replayed { .. }),
        );
        assert_eq!(e, Error::Replayed { seq: 70 });
        let e = expect_drop(
            &mut inb,
            &mut failed,
            &format!("{name}: replay of seq 10"),
            |sa| common::decrypt(sa, &pkts[9]),
            |e| matches!(e, Error::Replayed { .. }),
        );
        assert_eq!(e, Error::Replayed { seq: 10 });
        // seq 1 with highest 70 and a 64-packet window: 1 + 64 <= 70, too old.
        let e = expect_drop(
            &mut inb,
            &mut failed,
            &format!("{name}: too old seq 1"),
            |sa| common::decrypt(sa, &pkts[0]),
            |e| matches!(e, Error::TooOld { .. }),
        );
        assert_eq!(
            e,
            Error::TooOld {
                seq: 1,
                highest: 70
            }
        );
        // A late packet inside the window is fine once, then a replay.
        let (late_ok, more) = (&pkts[75], &pkts[74]);
        common::decrypt(&mut inb, late_ok).expect(&name);
        common::decrypt(&mut inb, more).expect(&name);
        expect_drop(
            &mut inb,
            &mut failed,
            &format!("{name}: replay of a late packet"),
            |sa| common::decrypt(sa, more),
            |e| *e == Error::Replayed { seq: 75 },
        );
        assert_eq!(inb.stats().dropped(DropReason::Replay), 3, "{name}");
        assert_eq!(inb.stats().dropped(DropReason::TooOld), 1, "{name}");
        assert_eq!(inb.stats().dropped_total(), failed, "{name}");
        assert_eq!(inb.stats().packets, 71, "{name}");
    }
}

/// Builds a NULL+HMAC ESP packet by hand: `SPI || seq || payload || pad || pad length
/// || next header || ICV`, with a valid ICV over whatever trailer we choose.
fn null_hmac_packet(
    alg: Integrity,
    key: &[u8],
    spi: u32,
    seq: u32,
    payload: &[u8],
    (pad, pad_len, nh): (&[u8], u8, u8),
) -> Vec<u8> {
    let mut esp = spi.to_be_bytes().to_vec();
    esp.extend_from_slice(&seq.to_be_bytes());
    esp.extend_from_slice(payload);
    esp.extend_from_slice(pad);
    esp.push(pad_len);
    esp.push(nh);
    let icv = hmac_trunc(alg, key, &esp);
    esp.extend_from_slice(&icv);
    ipv4([192, 0, 2, 1], [198, 51, 100, 2], 50, 0, &esp)
}

/// Builds an AES-128-GCM ESP packet with the `aes-gcm` crate: nonce = salt || IV (IV =
/// seq), AAD = SPI || seq (RFC 4106), plaintext = payload || pad || pad length || nh.
fn gcm_packet(key_salt: &[u8], spi: u32, seq: u32, payload: &[u8], trailer: &[u8]) -> Vec<u8> {
    let aead = aes_gcm::Aes128Gcm::new_from_slice(&key_salt[..16]).expect("key");
    let iv = u64::from(seq).to_be_bytes();
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&key_salt[16..20]);
    nonce[4..].copy_from_slice(&iv);
    let mut aad = spi.to_be_bytes().to_vec();
    aad.extend_from_slice(&seq.to_be_bytes());
    let mut body = payload.to_vec();
    body.extend_from_slice(trailer);
    let tag = aead
        .encrypt_inout_detached(&nonce.into(), &aad, body.as_mut_slice().into())
        .expect("seal");
    let mut esp = aad;
    esp.extend_from_slice(&iv);
    esp.extend_from_slice(&body);
    esp.extend_from_slice(&tag);
    ipv4([192, 0, 2, 1], [198, 51, 100, 2], 50, 0, &esp)
}

#[test]
fn bad_padding_bad_next_header_and_dummy_with_null_hmac() {
    let alg = Integrity::HmacSha1_96;
    let key = common::integ_key_for(alg);
    let suite = (Cipher::Null, Some(alg));
    let mut inb =
        SecurityAssociation::new(config(0x777, Direction::Inbound, Mode::Tunnel, suite), T0)
            .expect("inbound");
    let inner = inner_v4(9, 0); // 37 bytes: +3 pad +2 = 42... use 1-byte aligned pads below
    assert_eq!(inner.len(), 37);
    let mut failed = 0;
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };
    // Sanity: a correct hand-made packet is accepted (37 + 1 + 2 = 40).
    let good = null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[1], 1, 4));
    assert_eq!(common::decrypt(&mut inb, &good).expect("good"), inner);

    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        (
            "padding 02",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[2], 1, 4)),
            Error::BadPadding,
        ),
        (
            "padding 01 02 04 03 02",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[1, 2, 4, 3, 2], 5, 4)),
            Error::BadPadding,
        ),
        (
            "padding 00 00 00 00 00",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[0; 5], 5, 4)),
            Error::BadPadding,
        ),
        (
            "pad length beyond the payload",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[1], 200, 4)),
            Error::BadPadding,
        ),
        (
            "next header 17 in tunnel mode",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[1], 1, 17)),
            Error::BadNextHeader(17),
        ),
        (
            "next header 41 on an IPv4 inner packet",
            null_hmac_packet(alg, &key, 0x777, next(), &inner, (&[1], 1, 41)),
            Error::BadNextHeader(41),
        ),
        (
            "next header 59 (dummy)",
            null_hmac_packet(alg, &key, 0x777, next(), &[0xaa; 38], (&[], 0, 59)),
            Error::DummyPacket,
        ),
    ];
    for (what, pkt, want) in &cases {
        let e = expect_drop(
            &mut inb,
            &mut failed,
            what,
            |sa| common::decrypt(sa, pkt),
            |e| e == want,
        );
        assert_eq!(e, *want, "{what}");
        // The ICV verified, so the window recorded the packet: a resend is a replay.
        expect_drop(
            &mut inb,
            &mut failed,
            &format!("{what} (resent)"),
            |sa| common::decrypt(sa, pkt),
            |e| matches!(e, Error::Replayed { .. }),
        );
    }
    assert_eq!(inb.stats().dropped(DropReason::BadPadding), 4);
    assert_eq!(inb.stats().dropped(DropReason::BadNextHeader), 2);
    assert_eq!(inb.stats().dropped(DropReason::Dummy), 1);
    assert_eq!(inb.stats().dropped(DropReason::Replay), 7);
    assert_eq!(inb.stats().dropped_total(), failed);
    assert_eq!(inb.stats().packets, 1);

    // Transport mode: next header 0 (Hop-by-Hop) cannot follow ESP.
    let mut tr = SecurityAssociation::new(
        config(0x777, Direction::Inbound, Mode::Transport, suite),
        T0,
    )
    .expect("inbound");
    let pkt = null_hmac_packet(alg, &key, 0x777, 1, &[0x55; 10], (&[], 0, 0));
    let mut failed = 0;
    expect_drop(
        &mut tr,
        &mut failed,
        "transport next header 0",
        |sa| common::decrypt(sa, &pkt),
        |e| *e == Error::BadNextHeader(0),
    );
    assert_eq!(tr.stats().dropped_total(), failed);
}

#[test]
fn bad_padding_and_bad_next_header_with_aes_gcm() {
    let suite = (Cipher::Aes128Gcm, None);
    let key = common::key_for(Cipher::Aes128Gcm);
    let mut inb =
        SecurityAssociation::new(config(0x778, Direction::Inbound, Mode::Tunnel, suite), T0)
            .expect("inbound");
    let inner = inner_v4(9, 0);
    let good = gcm_packet(&key, 0x778, 1, &inner, &[1, 1, 4]);
    assert_eq!(common::decrypt(&mut inb, &good).expect("good"), inner);
    let mut failed = 0;
    let cases = [
        (
            "gcm padding 03",
            gcm_packet(&key, 0x778, 2, &inner, &[3, 1, 4]),
            Error::BadPadding,
        ),
        (
            "gcm padding 01 02 03 05 05",
            gcm_packet(&key, 0x778, 3, &inner, &[1, 2, 3, 5, 5, 5, 4]),
            Error::BadPadding,
        ),
        (
            "gcm next header 17",
            gcm_packet(&key, 0x778, 4, &inner, &[1, 1, 17]),
            Error::BadNextHeader(17),
        ),
        (
            "gcm next header 6",
            gcm_packet(&key, 0x778, 5, &inner, &[1, 1, 6]),
            Error::BadNextHeader(6),
        ),
        (
            "gcm dummy",
            gcm_packet(&key, 0x778, 6, &[0; 6], &[59]),
            Error::DummyPacket,
        ),
    ];
    for (what, pkt, want) in &cases {
        expect_drop(
            &mut inb,
            &mut failed,
            what,
            |sa| common::decrypt(sa, pkt),
            |e| e == want,
        );
    }
    assert_eq!(inb.stats().dropped(DropReason::BadPadding), 2);
    assert_eq!(inb.stats().dropped(DropReason::BadNextHeader), 2);
    assert_eq!(inb.stats().dropped(DropReason::Dummy), 1);
    assert_eq!(inb.stats().dropped_total(), failed);
}

#[test]
fn dummy_packets_are_dropped_and_counted() {
    for suite in SUITES {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x1234, Mode::Tunnel, suite);
        let mut failed = 0;
        for len in [0usize, 1, 20, 100] {
            let mut buf = vec![0xeeu8; 256 + len + 256];
            let mut p = PacketBuf::new(&mut buf, 256, len).expect("buf");
            out.encrypt_dummy(&mut p, T0).expect("dummy encrypt");
            let prot = p.data().to_vec();
            expect_drop(
                &mut inb,
                &mut failed,
                &format!("{name}: dummy of {len} bytes"),
                |sa| common::decrypt(sa, &prot),
                |e| *e == Error::DummyPacket,
            );
        }
        assert_eq!(inb.stats().dropped(DropReason::Dummy), 4, "{name}");
        assert_eq!(inb.stats().dropped_total(), failed, "{name}");
        // Real traffic still flows afterwards.
        let p = common::encrypt(&mut out, &inner_v4(5, 0)).expect("encrypt");
        assert!(common::decrypt(&mut inb, &p).is_ok(), "{name}");
    }
}

#[test]
fn hard_lifetime_by_packets_expires_after_a_rekey_event() {
    let suite = (Cipher::Aes128Gcm, None);
    let mut ocfg = config(0x999, Direction::Outbound, Mode::Tunnel, suite);
    ocfg.tunnel(
        "192.0.2.1".parse().expect("addr"),
        "198.51.100.2".parse().expect("addr"),
    )
    .soft_lifetime(Lifetime::NONE.with_packets(2))
    .hard_lifetime(Lifetime::NONE.with_packets(3));
    let mut out = SecurityAssociation::new(ocfg, T0).expect("outbound");
    let mut icfg = config(0x999, Direction::Inbound, Mode::Tunnel, suite);
    icfg.hard_lifetime(Lifetime::NONE.with_packets(2));
    let mut inb = SecurityAssociation::new(icfg, T0).expect("inbound");

    let pkts: Vec<Vec<u8>> = (0..3)
        .map(|i| common::encrypt(&mut out, &inner_v4(i, 0)).expect("within lifetime"))
        .collect();
    let mut failed = 0;
    expect_drop(
        &mut out,
        &mut failed,
        "encrypt after hard lifetime",
        |sa| common::encrypt(sa, &inner_v4(1, 0)),
        |e| *e == Error::LifetimeExpired(LifetimeLimit::Packets),
    );
    expect_drop(
        &mut out,
        &mut failed,
        "encrypt again after hard lifetime",
        |sa| common::encrypt(sa, &inner_v4(1, 0)),
        |e| *e == Error::LifetimeExpired(LifetimeLimit::Packets),
    );
    assert!(out.is_expired());
    assert_eq!(out.stats().dropped(DropReason::LifetimeExpired), 2);
    assert_eq!(out.stats().dropped_total(), failed);
    assert_eq!(
        out.poll_event(T0),
        Some(SaEvent::Rekey(LifetimeLimit::Packets))
    );
    assert_eq!(
        out.poll_event(T0),
        Some(SaEvent::Expired(LifetimeLimit::Packets))
    );
    assert_eq!(out.poll_event(T0), None);

    // Inbound: two packets, then the SA refuses the third.
    let mut failed = 0;
    common::decrypt(&mut inb, &pkts[0]).expect("1");
    common::decrypt(&mut inb, &pkts[1]).expect("2");
    expect_drop(
        &mut inb,
        &mut failed,
        "decrypt after hard lifetime",
        |sa| common::decrypt(sa, &pkts[2]),
        |e| *e == Error::LifetimeExpired(LifetimeLimit::Packets),
    );
    assert_eq!(inb.stats().dropped_total(), failed);
    assert_eq!(
        inb.poll_event(T0),
        Some(SaEvent::Expired(LifetimeLimit::Packets))
    );
    assert_eq!(inb.poll_event(T0), None);
}

#[test]
fn hard_lifetime_by_time() {
    let suite = (Cipher::ChaCha20Poly1305, None);
    let mut cfg = config(0x999, Direction::Outbound, Mode::Transport, suite);
    cfg.soft_lifetime(Lifetime::NONE.with_time(Duration::from_secs(50)))
        .hard_lifetime(Lifetime::NONE.with_time(Duration::from_secs(60)));
    let start = Duration::from_secs(1000);
    let mut out = SecurityAssociation::new(cfg, start).expect("outbound");
    let pkt = inner_v4(3, 0);
    let enc = |sa: &mut SecurityAssociation, at: Duration| {
        let mut buf = vec![0u8; 64 + pkt.len() + 64];
        buf[64..64 + pkt.len()].copy_from_slice(&pkt);
        let mut p = PacketBuf::new(&mut buf, 64, pkt.len()).expect("buf");
        sa.encrypt(&mut p, at).map(|()| p.data().to_vec())
    };
    assert!(enc(&mut out, start + Duration::from_secs(10)).is_ok());
    assert_eq!(out.poll_event(start + Duration::from_secs(10)), None);
    assert_eq!(
        out.poll_event(start + Duration::from_secs(55)),
        Some(SaEvent::Rekey(LifetimeLimit::Time))
    );
    assert!(enc(&mut out, start + Duration::from_secs(59)).is_ok());
    let mut failed = 0;
    expect_drop(
        &mut out,
        &mut failed,
        "encrypt after the time limit",
        |sa| enc(sa, start + Duration::from_secs(60)),
        |e| *e == Error::LifetimeExpired(LifetimeLimit::Time),
    );
    assert_eq!(
        out.poll_event(start + Duration::from_secs(61)),
        Some(SaEvent::Expired(LifetimeLimit::Time))
    );
    assert_eq!(out.stats().dropped_total(), failed);
}

#[test]
fn sequence_number_overflow_without_esn() {
    for suite in SUITES {
        let name = suite_name(suite);
        let mut cfg = config(0x555, Direction::Outbound, Mode::Transport, suite);
        cfg.seq(u64::from(u32::MAX) - 1);
        let mut out = SecurityAssociation::new(cfg, T0).expect("outbound");
        let p = common::encrypt(&mut out, &inner_v4(4, 0)).expect("last sequence number");
        assert_eq!(&p[24..28], &[0xff; 4], "{name}: wire seq 2^32-1");
        let mut failed = 0;
        for _ in 0..3 {
            expect_drop(
                &mut out,
                &mut failed,
                &format!("{name}: after 2^32-1"),
                |sa| common::encrypt(sa, &inner_v4(4, 0)),
                |e| *e == Error::SequenceOverflow,
            );
        }
        assert_eq!(out.seq(), u64::from(u32::MAX), "{name}");
        assert_eq!(out.stats().dropped(DropReason::SequenceOverflow), 3);
        assert_eq!(out.stats().dropped_total(), failed);

        // The receiver accepts the last packet.
        let mut icfg = config(0x555, Direction::Inbound, Mode::Transport, suite);
        icfg.seq(u64::from(u32::MAX) - 1);
        let mut inb = SecurityAssociation::new(icfg, T0).expect("inbound");
        assert!(common::decrypt(&mut inb, &p).is_ok(), "{name}");
    }
}

#[test]
fn sequence_number_overflow_with_esn() {
    for suite in SUITES {
        let name = suite_name(suite);
        let mut cfg = config(0x555, Direction::Outbound, Mode::Transport, suite);
        cfg.esn(true).seq(u64::MAX - 1);
        let mut out = SecurityAssociation::new(cfg, T0).expect("outbound");
        let p = common::encrypt(&mut out, &inner_v4(4, 0)).expect("last ESN");
        assert_eq!(&p[24..28], &[0xff; 4], "{name}");
        let mut failed = 0;
        expect_drop(
            &mut out,
            &mut failed,
            &format!("{name}: after 2^64-1"),
            |sa| common::encrypt(sa, &inner_v4(4, 0)),
            |e| *e == Error::SequenceOverflow,
        );
        assert_eq!(out.seq(), u64::MAX);
        assert_eq!(out.stats().dropped_total(), failed);

        let mut icfg = config(0x555, Direction::Inbound, Mode::Transport, suite);
        icfg.esn(true).seq(u64::MAX - 1);
        let mut inb = SecurityAssociation::new(icfg, T0).expect("inbound");
        assert!(common::decrypt(&mut inb, &p).is_ok(), "{name}");
        assert_eq!(inb.seq(), u64::MAX, "{name}");
    }
}

/// ESP padding + pad length + next header + ICV for `pkt` (IPv4 without options) under
/// `suite` in `mode`: RFC 4303 §2.4 minimal padding of the encrypted part.
fn needed_tail(suite: (Cipher, Option<Integrity>), mode: Mode, pkt: &[u8]) -> usize {
    let payload = match mode {
        Mode::Transport => pkt.len() - 20,
        _ => pkt.len(),
    };
    // The default `EspPadding::CipherBlocks` pads to 16-byte blocks (NULL: 4 bytes).
    let align = if suite.0 == Cipher::Null { 4 } else { 16 };
    let pad = (align - (payload + 2) % align) % align;
    let icv = suite.1.map_or(16, Integrity::icv_len);
    pad + 2 + icv
}

/// `SecurityAssociation::tailroom_for(len)` promises enough tailroom for a packet of
/// `len` bytes (the docs of `encrypt` say so, and `encrypt_bytes` relies on it).
#[test]
fn tailroom_for_is_enough_in_every_mode() {
    let mut failures = Vec::new();
    for suite in common::all_suites() {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let (mut out, _) = pair(0x1234, mode, suite);
            for n in 0..40 {
                for pkt in [inner_v4(n, 0), common::inner_v6(n, 0)] {
                    let head = out.max_headroom();
                    let tail = out.tailroom_for(pkt.len());
                    let mut buf = vec![0u8; head + pkt.len() + tail];
                    buf[head..head + pkt.len()].copy_from_slice(&pkt);
                    let mut p = PacketBuf::new(&mut buf, head, pkt.len()).expect("buf");
                    if let Err(e) = out.encrypt(&mut p, T0) {
                        failures.push(format!(
                            "{} {mode:?} {}-byte IPv{} packet: {e}",
                            suite_name(suite),
                            pkt.len(),
                            pkt[0] >> 4
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} encrypts failed with tailroom_for() bytes of tailroom, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(12)].join("\n")
    );
}

#[test]
fn too_little_headroom_or_tailroom_leaves_the_packet_intact() {
    for suite in SUITES {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let name = format!("{} {mode:?}", suite_name(suite));
            let (mut out, mut inb) = pair(0x1234, mode, suite);
            let pkt = inner_v4(30, 0);
            let head = out.max_headroom();
            // The tailroom this packet really needs (computed here, independently of
            // `tailroom_for`, which `tailroom_for_is_enough_in_every_mode` checks).
            let tail = needed_tail(suite, mode, &pkt);
            let mut failed = 0;
            // Headroom one byte short.
            let mut buf = vec![0x11u8; head - 1 + pkt.len() + tail + 8];
            buf[head - 1..head - 1 + pkt.len()].copy_from_slice(&pkt);
            let snapshot = buf.clone();
            let mut p = PacketBuf::new(&mut buf, head - 1, pkt.len()).expect("buf");
            let before = drops(&out);
            let e = out.encrypt(&mut p, T0).expect_err("no headroom");
            assert_eq!(
                e,
                Error::NoHeadroom {
                    needed: head,
                    available: head - 1
                },
                "{name}"
            );
            assert_eq!((p.offset(), p.len()), (head - 1, pkt.len()), "{name}");
            assert_one_drop(&out, &before, DropReason::NoBufferSpace, &name);
            failed += 1;
            assert_eq!(buf, snapshot, "{name}: buffer changed by a failed encrypt");
            // Tailroom one byte short.
            let mut buf = vec![0x22u8; head + pkt.len() + tail - 1];
            buf[head..head + pkt.len()].copy_from_slice(&pkt);
            let snapshot = buf.clone();
            let mut p = PacketBuf::new(&mut buf, head, pkt.len()).expect("buf");
            let before = drops(&out);
            let e = out.encrypt(&mut p, T0).expect_err("no tailroom");
            assert_eq!(
                e,
                Error::NoTailroom {
                    needed: tail,
                    available: tail - 1
                },
                "{name}"
            );
            assert_eq!((p.offset(), p.len()), (head, pkt.len()), "{name}");
            assert_one_drop(&out, &before, DropReason::NoBufferSpace, &name);
            failed += 1;
            assert_eq!(buf, snapshot, "{name}: buffer changed by a failed encrypt");
            assert_eq!(out.stats().dropped_total(), failed, "{name}");
            // Exactly enough room works, and used sequence number 1 (none was burnt).
            let mut buf = vec![0x33u8; head + pkt.len() + tail];
            buf[head..head + pkt.len()].copy_from_slice(&pkt);
            let mut p = PacketBuf::new(&mut buf, head, pkt.len()).expect("buf");
            out.encrypt(&mut p, T0).expect("exact room");
            assert_eq!(out.seq(), 1, "{name}");
            let prot = p.data().to_vec();
            assert_eq!(common::decrypt(&mut inb, &prot).expect(&name), pkt);
        }
    }
}

#[test]
fn wrong_direction_is_refused_and_counted() {
    let (mut out, mut inb) = pair(0x1234, Mode::Tunnel, SUITES[0]);
    let prot = common::encrypt(&mut out, &inner_v4(3, 0)).expect("encrypt");
    let mut failed = 0;
    expect_drop(
        &mut out,
        &mut failed,
        "decrypt on outbound",
        |sa| common::decrypt(sa, &prot),
        |e| *e == Error::WrongDirection,
    );
    expect_drop(
        &mut inb,
        &mut failed,
        "encrypt on inbound",
        |sa| common::encrypt(sa, &inner_v4(3, 0)),
        |e| *e == Error::WrongDirection,
    );
    assert_eq!(
        out.stats().dropped_total() + inb.stats().dropped_total(),
        failed
    );
}

#[test]
fn config_rejects_bad_combinations() {
    let k = common::key_for(Cipher::Aes128Gcm);
    let mut c = SaConfig::new(
        0x300,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &k,
    );
    c.integrity(Integrity::HmacSha256_128, &[0; 32]);
    assert!(SecurityAssociation::new(c, T0).is_err(), "GCM + HMAC");
    let c = SaConfig::new(0x300, Direction::Inbound, Mode::Tunnel, Cipher::Null, &[]);
    assert!(
        SecurityAssociation::new(c, T0).is_err(),
        "NULL + no integrity"
    );
    let c = SaConfig::new(
        0x300,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &k[..16],
    );
    assert!(
        SecurityAssociation::new(c, T0).is_err(),
        "GCM key without salt"
    );
    let c = SaConfig::new(
        0xff,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &k,
    );
    assert!(SecurityAssociation::new(c, T0).is_err(), "reserved SPI");
    let c = SaConfig::new(
        0x300,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &k,
    );
    assert!(
        SecurityAssociation::new(c, T0).is_err(),
        "tunnel without endpoints"
    );
}

#[test]
fn ipv6_truncations_are_refused_and_counted_never_panic() {
    for suite in SUITES {
        let name = suite_name(suite);
        // Tunnel over IPv6, and IPv6 transport with a Hop-by-Hop header in front of ESP.
        let mut ocfg = config(0x1234, Direction::Outbound, Mode::Tunnel, suite);
        ocfg.tunnel(
            "2001:db8::1".parse().expect("addr"),
            "2001:db8::2".parse().expect("addr"),
        );
        let mut out_tun = SecurityAssociation::new(ocfg, T0).expect("outbound");
        let in_tun = config(0x1234, Direction::Inbound, Mode::Tunnel, suite);
        let (mut out_tr, _) = pair(0x1234, Mode::Transport, suite);
        let in_tr = config(0x1234, Direction::Inbound, Mode::Transport, suite);
        let mut hbh = vec![17, 0, 1, 4, 0, 0, 0, 0];
        hbh.extend_from_slice(&common::udp(1, 2, 30));
        let cases = [
            (
                common::encrypt(&mut out_tun, &inner_v4(30, 0)).expect("encrypt"),
                in_tun,
            ),
            (
                common::encrypt(&mut out_tr, &common::ipv6(0, 0, &hbh)).expect("encrypt"),
                in_tr,
            ),
        ];
        for (prot, icfg) in cases {
            let mut inb = SecurityAssociation::new(icfg, T0).expect("inbound");
            let mut failed = 0;
            for cut in 0..prot.len() {
                let what = format!("{name}: IPv6 plain cut to {cut}");
                expect_drop(
                    &mut inb,
                    &mut failed,
                    &what,
                    |sa| common::decrypt(sa, &prot[..cut]),
                    |e| matches!(e, Error::Malformed(_)),
                );
                if cut >= 40 {
                    let mut fixed = prot[..cut].to_vec();
                    fixed[4..6].copy_from_slice(&((cut - 40) as u16).to_be_bytes());
                    let what = format!("{name}: IPv6 fixed cut to {cut}");
                    expect_drop(
                        &mut inb,
                        &mut failed,
                        &what,
                        |sa| common::decrypt(sa, &fixed),
                        |e| {
                            matches!(
                                e,
                                Error::Malformed(_)
                                    | Error::AuthenticationFailed
                                    | Error::UnknownSpi { .. }
                            )
                        },
                    );
                }
            }
            assert_eq!(inb.stats().dropped_total(), failed, "{name}");
            assert!(common::decrypt(&mut inb, &prot).is_ok(), "{name}");
        }
    }
}
