//! Soft lifetime jitter (issue 12 §2): SAs created together with the same soft
//! lifetime get soft limits spread below it, so that they do not all ask for a rekey
//! at once; the limits stay in bounds, and a jitter of 0 keeps them exact.

use ipsec_core::crypto::IvSource;
use ipsec_core::{
    Cipher, Direction, Lifetime, LifetimeLimit, Mode, SaConfig, SaEvent, SecurityAssociation,
};
use std::collections::HashSet;
use std::time::Duration;

const T0: Duration = Duration::from_secs(100);
const SOFT_SECS: u64 = 3600;
const SOFT_PACKETS: u64 = 1_000_000;
const SOFT_BYTES: u64 = 1 << 30;

fn config(spi: u32) -> SaConfig {
    let mut c = SaConfig::new(
        spi,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &[0x42; 20],
    );
    c.soft_lifetime(
        Lifetime::NONE
            .with_time(Duration::from_secs(SOFT_SECS))
            .with_packets(SOFT_PACKETS)
            .with_bytes(SOFT_BYTES),
    )
    .hard_lifetime(
        Lifetime::NONE
            .with_time(Duration::from_secs(SOFT_SECS + 1))
            .with_packets(SOFT_PACKETS + 1)
            .with_bytes(SOFT_BYTES + 1),
    );
    c
}

#[test]
fn a_thousand_sas_created_together_get_spread_soft_limits_within_bounds() {
    let sas: Vec<SecurityAssociation> = (0..1000)
        .map(|i| SecurityAssociation::new(config(0x1000 + i), T0).expect("valid"))
        .collect();
    let soft = |sa: &SecurityAssociation| sa.soft_limits();
    let times: Vec<Duration> = sas.iter().map(|sa| soft(sa).time.unwrap()).collect();
    let packets: Vec<u64> = sas.iter().map(|sa| soft(sa).packets.unwrap()).collect();
    let bytes: Vec<u64> = sas.iter().map(|sa| soft(sa).bytes.unwrap()).collect();
    // Default 10%: in [0.9 * soft, soft], never above the hard limit.
    let lo_t = Duration::from_secs(SOFT_SECS) * 9 / 10;
    assert!(
        times
            .iter()
            .all(|&t| t >= lo_t && t <= Duration::from_secs(SOFT_SECS))
    );
    assert!(
        packets
            .iter()
            .all(|&p| (SOFT_PACKETS * 9 / 10..=SOFT_PACKETS).contains(&p))
    );
    assert!(
        bytes
            .iter()
            .all(|&b| (SOFT_BYTES / 10 * 9..=SOFT_BYTES).contains(&b))
    );
    // Spread: nearly all distinct, and covering most of the window (uniform draws of
    // 1,000 SAs leave under 1% at either end with overwhelming probability).
    let distinct: HashSet<Duration> = times.iter().copied().collect();
    assert!(distinct.len() > 990, "{} distinct times", distinct.len());
    let distinct: HashSet<u64> = packets.iter().copied().collect();
    assert!(
        distinct.len() > 900,
        "{} distinct packet limits",
        distinct.len()
    );
    let (min, max) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(*max - *min > Duration::from_secs(SOFT_SECS) / 10 * 9 / 10);
    // The soft limits drawn are the ones in force: no SA asks for a rekey before its
    // own limit, and each does at it.
    let mut sa = sas.into_iter().next().unwrap();
    let due = T0 + sa.soft_limits().time.unwrap();
    assert_eq!(sa.poll_event(due - Duration::from_nanos(1)), None);
    assert_eq!(
        sa.poll_event(due),
        Some(SaEvent::Rekey(LifetimeLimit::Time))
    );
}

#[test]
fn jitter_zero_keeps_the_configured_limits_exactly() {
    for i in 0..100 {
        let mut c = config(0x1000 + i);
        c.soft_lifetime_jitter(0);
        let mut sa = SecurityAssociation::new(c, T0).expect("valid");
        assert_eq!(
            sa.soft_limits(),
            Lifetime::NONE
                .with_time(Duration::from_secs(SOFT_SECS))
                .with_packets(SOFT_PACKETS)
                .with_bytes(SOFT_BYTES)
        );
        let due = T0 + Duration::from_secs(SOFT_SECS);
        assert_eq!(sa.poll_event(due - Duration::from_nanos(1)), None);
        assert_eq!(
            sa.poll_event(due),
            Some(SaEvent::Rekey(LifetimeLimit::Time))
        );
    }
}

#[test]
fn small_limits_never_drop_to_zero_or_rise_above_the_hard_limit() {
    for i in 0..500 {
        let mut c = config(0x1000 + i);
        c.soft_lifetime(
            Lifetime::NONE
                .with_packets(1)
                .with_bytes(2)
                .with_time(Duration::from_nanos(1)),
        )
        .hard_lifetime(Lifetime::NONE.with_packets(2).with_bytes(3))
        .soft_lifetime_jitter(100);
        let sa = SecurityAssociation::new(c, T0).expect("valid");
        let s = sa.soft_limits();
        assert_eq!(s.packets, Some(1));
        assert!(matches!(s.bytes, Some(1 | 2)));
        assert_eq!(s.time, Some(Duration::from_nanos(1)));
    }
}

#[test]
fn out_of_range_jitter_is_refused_naming_the_field() {
    let mut c = config(0x1000);
    c.soft_lifetime_jitter(101);
    let e = SecurityAssociation::new(c, T0).unwrap_err();
    assert_eq!(e.field(), "soft_lifetime_jitter", "{e}");
    assert!(e.message().contains("0..=100"), "{e}");
    let mut c = config(0x1000);
    c.soft_lifetime_jitter(100);
    SecurityAssociation::new(c, T0).expect("100% is the top of the range");
}

/// A fixed randomness source: the jitter it gives is the same every time.
struct Fixed(u8);

impl IvSource for Fixed {
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        iv.fill(self.0);
    }
}

#[test]
fn an_injected_randomness_source_makes_the_jitter_repeatable() {
    let draw = |byte| {
        let mut c = config(0x1000);
        c.iv_source(Box::new(Fixed(byte)));
        SecurityAssociation::new(c, T0).unwrap().soft_limits()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    // A draw of 0 keeps the configured limit.
    assert_eq!(draw(0).packets, Some(SOFT_PACKETS));
}

#[test]
fn the_sa_file_key_sets_the_jitter_and_out_of_range_values_are_refused() {
    let sa = |extra: &str| {
        format!(
            "[[sa]]\nname = \"a\"\nspi = 0x1000\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\nsoft_lifetime = {{ seconds = 3600 }}\n{extra}",
            "11".repeat(20)
        )
    };
    let exact = ipsec_core::sa_file::parse_sa_file(&sa("soft_lifetime_jitter = 0\n")).unwrap();
    let cfg = exact.into_iter().next().unwrap().config;
    let made = SecurityAssociation::new(cfg, T0).unwrap();
    assert_eq!(made.soft_limits().time, Some(Duration::from_secs(3600)));
    for bad in ["soft_lifetime_jitter = 101", "soft_lifetime_jitter = -1"] {
        let e = ipsec_core::sa_file::parse_sa_file(&sa(bad)).unwrap_err();
        assert_eq!(e.field(), "sa \"a\": soft_lifetime_jitter", "{bad}: {e}");
    }
}

/// A restored SA keeps the soft limits its jitter drew when it was created (a snapshot
/// carries them), instead of drawing new ones: the standby asks for the rekey when the
/// primary would have.
#[test]
fn a_restored_sa_keeps_the_soft_limits_it_drew() {
    for spi in 0x4000..0x4010 {
        let mut c = config(spi);
        c.soft_lifetime_jitter(50);
        let sa = SecurityAssociation::new(c, T0).unwrap();
        let snapshot = sa.snapshot(T0);
        let restored = SecurityAssociation::restore(
            snapshot.as_bytes(),
            &ipsec_core::RestoreOptions::default(),
            T0,
        )
        .unwrap();
        assert_eq!(restored.soft_limits(), sa.soft_limits(), "spi {spi:#x}");
    }
}
