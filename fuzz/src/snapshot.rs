//! The `sa_snapshot` target: untrusted bytes into the SA snapshot parser and
//! `SecurityAssociation::restore` (`ipsec_core::snapshot`).
//!
//! Input: one byte of options (the margin's size and whether `not_below` is given), then
//! the snapshot bytes. Checks: no panic on any input; `SaSnapshot::from_bytes` and
//! `restore` agree on whether the bytes are a valid snapshot; an SA restored from them
//! snapshots to bytes that restore (margin 0) and snapshot again to the very same bytes
//! (the format is stable after one normalisation); a restored outbound SA continues
//! exactly `margin` after the snapshot's sequence number, never below `not_below`.

use core::time::Duration;
use ipsec_core::{
    Cipher, Direction, Integrity, Lifetime, Mode, PacketBuf, RestoreOptions, SaConfig, SaSnapshot,
    SecurityAssociation, SnapshotError,
};

/// The body of the `sa_snapshot` fuzz target.
pub fn sa_snapshot(data: &[u8]) {
    let Some((&opts, bytes)) = data.split_first() else {
        return;
    };
    let now = Duration::from_secs(1_000);
    let margin = match opts & 3 {
        0 => 0,
        1 => 1,
        2 => RestoreOptions::DEFAULT_SEQ_MARGIN,
        _ => u64::MAX / 2,
    };
    let mut options = RestoreOptions::new().seq_margin(margin);
    if opts & 4 != 0 {
        options = options.not_below(u64::from(opts) << 8);
    }
    let parsed = SaSnapshot::from_bytes(bytes);
    let restored = SecurityAssociation::restore(bytes, &options, now);
    match (&parsed, &restored) {
        (Err(a), Err(b)) => assert_eq!(a, b, "from_bytes and restore disagree"),
        (Err(a), Ok(_)) => panic!("restore accepted what from_bytes refused: {a}"),
        (Ok(_), Err(e)) => assert!(
            matches!(
                e,
                SnapshotError::SeqSpaceExhausted { .. } | SnapshotError::Backwards { .. }
            ),
            "from_bytes accepted what restore refused as invalid: {e}"
        ),
        (Ok(_), Ok(_)) => {}
    }
    let Ok(sa) = restored else {
        return;
    };
    if let Some(n) = options.not_below {
        assert!(sa.direction() != Direction::Outbound || sa.seq() >= n);
    }
    let once = sa.snapshot(now);
    let again =
        SecurityAssociation::restore(once.as_bytes(), &RestoreOptions::new().seq_margin(0), now)
            .expect("a snapshot of a restored SA restores");
    assert_eq!(again.seq(), sa.seq());
    let twice = again.snapshot(now);
    assert_eq!(once.as_bytes(), twice.as_bytes(), "snapshot not stable");
}

/// Valid snapshots for the corpus: `(name, input)` with the options byte in front.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let now = Duration::from_secs(50);
    let mut out = Vec::new();
    let mut push = |name: &str, sa: &SecurityAssociation, opts: u8| {
        let mut v = vec![opts];
        v.extend_from_slice(sa.snapshot(now).as_bytes());
        out.push((name.to_string(), v));
    };
    // The fuzz keys are made up (no real SA uses them).
    let key = |n: usize| (0..n).map(|i| i as u8 ^ 0x3c).collect::<Vec<u8>>();

    let mut c = SaConfig::new(
        0x1001,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &key(20),
    );
    c.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
        .seq(77)
        .udp_encap(4500, 4500)
        .path_mtu(Some(1400))
        .soft_lifetime(
            Lifetime::NONE
                .with_packets(100)
                .with_time(Duration::from_secs(30)),
        )
        .hard_lifetime(
            Lifetime::NONE
                .with_bytes(1 << 20)
                .with_time(Duration::from_secs(60)),
        );
    let mut sa = SecurityAssociation::new(c, Duration::from_secs(10)).unwrap();
    let mut buf = vec![0u8; 256];
    let inner = [
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1, 0x13, 0x88, 0x13, 0x88,
        0, 8, 0, 0,
    ];
    buf[100..128].copy_from_slice(&inner);
    let mut p = PacketBuf::new(&mut buf, 100, 28).unwrap();
    sa.encrypt(&mut p, Duration::from_secs(20)).unwrap();
    push("outbound-gcm-natt", &sa, 2);

    let mut c = SaConfig::new(
        0x1002,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes256Cbc,
        &key(32),
    );
    c.integrity(Integrity::HmacSha256_128, &key(32))
        .esn(true)
        .replay_window(128)
        .seq(5_000_000_000);
    push(
        "inbound-cbc-esn",
        &SecurityAssociation::new(c, Duration::ZERO).unwrap(),
        0,
    );

    let mut c = SaConfig::new(
        0x1003,
        Direction::Inbound,
        Mode::Transport,
        Cipher::Null,
        &[],
    );
    c.integrity(Integrity::HmacSha1_96, &key(20))
        .replay_window(0)
        .udp_encap(4500, 4500)
        .nat_original_addresses("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    push(
        "inbound-null-transport",
        &SecurityAssociation::new(c, Duration::ZERO).unwrap(),
        5,
    );

    let mut c = SaConfig::new(
        0x1004,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::ChaCha20Poly1305,
        &key(36),
    );
    c.tunnel(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    )
    .seq(u64::from(u32::MAX) - 3);
    push(
        "outbound-chacha-v6-near-end",
        &SecurityAssociation::new(c, Duration::ZERO).unwrap(),
        1,
    );
    out
}
