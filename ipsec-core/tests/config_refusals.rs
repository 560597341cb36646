//! Configurations that cannot work are refused, with an error that names the field, in
//! every way an SA is configured here: the builder ([`SaConfig`]), SA files and policy
//! files (`[[sa]]` tables). (The C and Python layers build the same `SaConfig`; their
//! own tests check that the refusals reach them.)

mod common;

use common::{T0, config, key_for};
use core::time::Duration;
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::lint_toml;
use ipsec_core::{
    Cipher, ConfigError, Direction, EspPadding, Integrity, Lifetime, Mode, PacketBuf, SaConfig,
    SecurityAssociation, Spd, TfcPadding,
};
use std::net::IpAddr;

const GCM: (Cipher, Option<Integrity>) = (Cipher::Aes128Gcm, None);
const CBC: (Cipher, Option<Integrity>) = (Cipher::Aes256Cbc, Some(Integrity::HmacSha512_256));

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// An outbound tunnel-mode configuration of `suite` between IPv4 (or IPv6) endpoints.
fn outbound(suite: (Cipher, Option<Integrity>), v6: bool) -> SaConfig {
    let mut c = config(0x1000, Direction::Outbound, Mode::Tunnel, suite);
    if v6 {
        c.tunnel(addr("2001:db8::1"), addr("2001:db8::2"));
    } else {
        c.tunnel(addr("192.0.2.1"), addr("192.0.2.2"));
    }
    c
}

/// The error creating an SA from `cfg` gives (it must give one).
fn refusal(cfg: SaConfig) -> ConfigError {
    SecurityAssociation::new(cfg, T0).expect_err("configuration must be refused")
}

/// The first `[[sa]]` table of an outbound AES-GCM tunnel SA called "x", plus `extra`.
fn sa_file(extra: &str) -> String {
    format!(
        "[[sa]]\nname = \"x\"\nspi = 0x1000\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
         cipher = \"aes-128-gcm\"\nkey = \"{}\"\ntunnel_src = \"192.0.2.1\"\n\
         tunnel_dst = \"192.0.2.2\"\n{extra}\n",
        common::to_hex(&key_for(Cipher::Aes128Gcm))
    )
}

/// The error loading `text` gives: at parse time, or when the SA is created.
fn file_refusal(text: &str) -> ConfigError {
    match parse_sa_file(text) {
        Err(e) => e,
        Ok(sas) => {
            let named = sas.into_iter().next().expect("one SA");
            SecurityAssociation::new(named.config, T0)
                .map(drop)
                .map_err(|e| e.in_context(&format!("sa {:?}", named.name)))
                .expect_err("SA file must be refused")
        }
    }
}

#[test]
fn outer_ttl_zero_is_refused() {
    let mut c = outbound(GCM, false);
    c.outer_ttl(0);
    let e = refusal(c);
    assert_eq!(e.field(), "outer_ttl", "{e}");
    assert!(e.message().contains("1..=255"), "{e}");
    let e = file_refusal(&sa_file("outer_ttl = 0"));
    assert_eq!(e.field(), "sa \"x\": outer_ttl", "{e}");
    // 1 is a TTL a packet can be sent with.
    let mut c = outbound(GCM, false);
    c.outer_ttl(1);
    SecurityAssociation::new(c, T0).expect("TTL 1");
}

#[test]
fn udp_encapsulation_with_a_port_zero_is_refused() {
    for (src, dst, which) in [
        (0, 4500, "source"),
        (4500, 0, "destination"),
        (0, 0, "source"),
    ] {
        let mut c = outbound(GCM, false);
        c.udp_encap(src, dst);
        let e = refusal(c);
        assert_eq!(e.field(), "udp_encap", "{e}");
        assert!(e.message().contains(which), "{e}");
        let e = file_refusal(&sa_file(&format!("udp_encap = [{src}, {dst}]")));
        assert_eq!(e.field(), "sa \"x\": udp_encap", "{e}");
    }
    let mut c = config(0x1000, Direction::Inbound, Mode::Tunnel, GCM);
    c.udp_encap(4500, 0);
    assert_eq!(refusal(c).field(), "udp_encap");
}

#[test]
fn a_soft_lifetime_must_be_below_the_hard_one_of_its_kind() {
    let cases: [(&str, Lifetime, Lifetime); 6] = [
        (
            "bytes",
            Lifetime::NONE.with_bytes(2000),
            Lifetime::NONE.with_bytes(1000),
        ),
        (
            "packets",
            Lifetime::NONE.with_packets(11),
            Lifetime::NONE.with_packets(10),
        ),
        (
            "seconds",
            Lifetime::NONE.with_time(Duration::from_secs(3600)),
            Lifetime::NONE.with_time(Duration::from_secs(60)),
        ),
        // Equal is no warning either: the rekey would come with the expiry (and a
        // soft byte limit equal to the hard one is never reached).
        (
            "bytes",
            Lifetime::NONE.with_bytes(1000),
            Lifetime::NONE.with_bytes(1000),
        ),
        // Each kind on its own: a soft byte limit below the hard one does not excuse a
        // soft packet limit above it.
        (
            "packets",
            Lifetime::NONE.with_bytes(10).with_packets(5),
            Lifetime::NONE.with_bytes(20).with_packets(5),
        ),
        (
            "seconds",
            Lifetime::NONE.with_time(Duration::from_millis(60_001)),
            Lifetime::NONE
                .with_time(Duration::from_secs(60))
                .with_packets(1),
        ),
    ];
    for dir in [Direction::Outbound, Direction::Inbound] {
        for (kind, soft, hard) in cases {
            let mut c = match dir {
                Direction::Outbound => outbound(GCM, false),
                _ => config(0x1000, dir, Mode::Tunnel, GCM),
            };
            c.soft_lifetime(soft).hard_lifetime(hard);
            let e = refusal(c);
            assert_eq!(e.field(), format!("soft_lifetime.{kind}"), "{e}");
            assert!(e.message().contains("not below"), "{e}");
        }
    }
    // Limits of different kinds do not compare; soft below hard is fine.
    let mut c = outbound(GCM, false);
    c.soft_lifetime(Lifetime::NONE.with_bytes(1 << 40).with_packets(99))
        .hard_lifetime(
            Lifetime::NONE
                .with_packets(100)
                .with_time(Duration::from_secs(1)),
        );
    SecurityAssociation::new(c, T0).expect("soft below hard, kinds apart");

    let e = file_refusal(&sa_file(
        "soft_lifetime = { bytes = 10, packets = 20 }\nhard_lifetime = { packets = 20 }",
    ));
    assert_eq!(e.field(), "sa \"x\": soft_lifetime.packets", "{e}");
}

#[test]
fn a_lifetime_limit_of_zero_is_refused() {
    for (which, kind, l) in [
        ("soft_lifetime", "bytes", Lifetime::NONE.with_bytes(0)),
        ("hard_lifetime", "packets", Lifetime::NONE.with_packets(0)),
        (
            "hard_lifetime",
            "seconds",
            Lifetime::NONE.with_time(Duration::ZERO),
        ),
    ] {
        let mut c = outbound(GCM, false);
        if which == "soft_lifetime" {
            c.soft_lifetime(l);
        } else {
            c.hard_lifetime(l);
        }
        let e = refusal(c);
        assert_eq!(e.field(), format!("{which}.{kind}"), "{e}");
        assert!(e.message().contains("no limit"), "{e}");
    }
    let e = file_refusal(&sa_file("hard_lifetime = { packets = 0 }"));
    assert_eq!(e.field(), "sa \"x\": hard_lifetime.packets", "{e}");
}

#[test]
fn a_replay_window_on_an_outbound_sa_is_refused() {
    for size in [0, 64, 1024] {
        let mut c = outbound(GCM, false);
        c.replay_window(size);
        let e = refusal(c);
        assert_eq!(e.field(), "replay_window", "{e}");
        assert!(e.message().contains("inbound"), "{e}");
    }
    let e = file_refusal(&sa_file("replay_window = 1024"));
    assert_eq!(e.field(), "sa \"x\": replay_window", "{e}");
    // Inbound: the window is the SA's.
    let mut c = config(0x1000, Direction::Inbound, Mode::Tunnel, GCM);
    c.replay_window(1024);
    let sa = SecurityAssociation::new(c, T0).expect("inbound window");
    assert_eq!(sa.replay_window().size(), 1024);
}

/// The largest TFC padding length the SA accepts (searched), and the SA with it.
fn largest_tfc(make: &dyn Fn() -> SaConfig) -> (u16, SecurityAssociation) {
    let accepts = |n: u16| {
        let mut c = make();
        c.tfc_padding(TfcPadding::PadTo(n));
        SecurityAssociation::new(c, T0).ok()
    };
    let (mut lo, mut hi) = (0u16, u16::MAX);
    assert!(accepts(lo).is_some());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if accepts(mid).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    (lo, accepts(lo).expect("largest accepted"))
}

#[test]
fn tfc_padding_that_no_packet_can_fit_is_refused() {
    let mut c = outbound(GCM, false);
    c.tfc_padding(TfcPadding::PadTo(u16::MAX));
    let e = refusal(c);
    assert_eq!(e.field(), "tfc_pad_to", "{e}");
    assert!(e.message().contains("at most"), "{e}");
    let e = file_refusal(&sa_file("tfc_pad_to = 65535"));
    assert_eq!(e.field(), "sa \"x\": tfc_pad_to", "{e}");

    // The limit is exact: a small packet padded to the largest accepted length still
    // becomes an ESP packet whose IP length field holds it.
    type Make = Box<dyn Fn() -> SaConfig>;
    let makes: [(&str, Make); 5] = [
        ("gcm v4", Box::new(|| outbound(GCM, false))),
        ("gcm v6", Box::new(|| outbound(GCM, true))),
        (
            "gcm v4 nat-t minimal",
            Box::new(|| {
                let mut c = outbound(GCM, false);
                c.udp_encap(4500, 4500).padding(EspPadding::Minimal);
                c
            }),
        ),
        ("cbc v4", Box::new(|| outbound(CBC, false))),
        (
            "cbc v6 nat-t",
            Box::new(|| {
                let mut c = outbound(CBC, true);
                c.udp_encap(4500, 4500);
                c
            }),
        ),
    ];
    for (label, make) in makes {
        let (n, mut sa) = largest_tfc(&*make);
        assert!(n > 65_000 && n < u16::MAX, "{label}: {n}");
        if label == "gcm v4" {
            assert_eq!(n, 65_470, "the figure in the docs of SaConfig::tfc_padding");
        }
        let inner = common::inner_v4(40, 0);
        let need = sa.max_overhead() + usize::from(n);
        let mut buf = vec![0u8; need + 64];
        let head = sa.max_headroom();
        buf[head..head + inner.len()].copy_from_slice(&inner);
        let mut pkt = PacketBuf::new(&mut buf, head, inner.len()).expect("descriptor");
        sa.encrypt(&mut pkt, T0)
            .unwrap_or_else(|e| panic!("{label}: padded to {n}: {e}"));
        let out = pkt.data();
        let length_field = if out[0] >> 4 == 4 {
            usize::from(u16::from_be_bytes([out[2], out[3]]))
        } else {
            usize::from(u16::from_be_bytes([out[4], out[5]])) + 40
        };
        assert_eq!(length_field, out.len(), "{label}");
        // Less than one padding block is left: one more byte of TFC would not fit.
        assert!(
            out.len() + 16 > usize::from(u16::MAX) + if out[0] >> 4 == 6 { 40 } else { 0 },
            "{label}: {} bytes at tfc {n}",
            out.len()
        );
    }
    // Inbound SAs do not pad: the value is not checked there.
    let mut c = config(0x1000, Direction::Inbound, Mode::Tunnel, GCM);
    c.tfc_padding(TfcPadding::PadTo(u16::MAX));
    SecurityAssociation::new(c, T0).expect("inbound TFC");
}

#[test]
fn a_missing_key_is_called_missing() {
    for cipher in [
        Cipher::Aes128Gcm,
        Cipher::ChaCha20Poly1305,
        Cipher::Aes128Cbc,
    ] {
        let mut c = SaConfig::new(0x1000, Direction::Inbound, Mode::Tunnel, cipher, &[]);
        c.integrity(Integrity::HmacSha256_128, &[0x11; 32]);
        let e = refusal(c);
        assert_eq!(e.field(), "key", "{e}");
        assert!(e.message().starts_with("missing"), "{e}");
        assert!(!e.message().contains("got 0"), "{e}");
    }
    let mut c = SaConfig::new(
        0x1000,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Cbc,
        &[1; 16],
    );
    c.integrity(Integrity::HmacSha256_128, &[]);
    let e = refusal(c);
    assert_eq!(e.field(), "integrity_key", "{e}");
    assert!(e.message().starts_with("missing"), "{e}");
    // NULL encryption takes no key: none is missing.
    let mut c = SaConfig::new(0x1000, Direction::Inbound, Mode::Tunnel, Cipher::Null, &[]);
    c.integrity(Integrity::HmacSha256_128, &[0x11; 32]);
    SecurityAssociation::new(c, T0).expect("NULL with HMAC");

    let text = sa_file("").replace(
        &format!(
            "key = \"{}\"\n",
            common::to_hex(&key_for(Cipher::Aes128Gcm))
        ),
        "",
    );
    let e = file_refusal(&text);
    assert_eq!(e.field(), "sa \"x\": key", "{e}");
    assert!(e.message().starts_with("missing"), "{e}");
}

#[test]
fn sa_file_errors_name_the_key_nested_keys_with_a_dot() {
    for (extra, key) in [
        ("outer_ttl = \"x\"", "outer_ttl"),
        ("spi2 = 1", "spi2"),
        ("hard_lifetime = { bytes = -1 }", "hard_lifetime.bytes"),
        (
            "soft_lifetime = { packets = \"many\" }",
            "soft_lifetime.packets",
        ),
        ("hard_lifetime = { minutes = 5 }", "hard_lifetime.minutes"),
        ("soft_lifetime = 5", "soft_lifetime"),
        ("seq = -1", "seq"),
        ("seq = \"0x1_0000_0000_0000_0000\"", "seq"),
        ("seq = \"12ab\"", "seq"),
        ("nat_keepalive_interval = \"\"", "nat_keepalive_interval"),
        ("udp_encap = [4500]", "udp_encap"),
        ("esn = \"yes\"", "esn"),
    ] {
        let e = file_refusal(&sa_file(extra));
        assert_eq!(e.field(), format!("sa \"x\": {key}"), "{extra}: {e}");
        // The two parts on their own (what Python's `ConfigError.field` gives).
        assert_eq!((e.context(), e.key()), (Some("sa \"x\""), key), "{extra}");
    }
    let e = file_refusal(&sa_file("").replace("spi = 0x1000\n", ""));
    assert_eq!(e.field(), "sa \"x\": spi", "{e}");
    assert_eq!(e.message(), "missing", "{e}");
}

#[test]
fn sa_file_64_bit_fields_take_hex_and_decimal_strings() {
    let load = |extra: &str| -> SaConfig {
        parse_sa_file(&sa_file(extra))
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
            .remove(0)
            .config
    };
    for (seq, want) in [
        ("\"0xffff_ffff_ffff_fffe\"", u64::MAX - 1),
        ("\"0X8765432100000006\"", 0x8765_4321_0000_0006),
        ("\"18446744073709551614\"", u64::MAX - 1),
        ("\"9_223_372_036_854_775_808\"", 1 << 63),
        ("42", 42),
    ] {
        let mut c = load(&format!("esn = true\nseq = {seq}"));
        c.iv_source(Box::new(common::FixedIv([7; 16])));
        let sa = SecurityAssociation::new(c, T0).expect("SA");
        assert_eq!(sa.seq(), want, "{seq}");
    }
    // Lifetimes and the keepalive interval, the other 64-bit fields.
    let c = load(
        "udp_encap = [4500, 4500]\nnat_keepalive_interval = \"0x10\"\n\
         soft_lifetime = { bytes = \"0xffff_ffff_ffff_fff0\", packets = \"1000\" }\n\
         hard_lifetime = { bytes = \"18446744073709551615\", seconds = \"0x0e10\" }",
    );
    let sa = SecurityAssociation::new(c, T0).expect("SA");
    assert_eq!(sa.nat_keepalive_interval(), Some(Duration::from_secs(16)));
    // Without ESN the 64-bit value is still refused, by the SA's own check.
    let e = file_refusal(&sa_file("seq = \"0x100000000\""));
    assert_eq!(e.field(), "sa \"x\": seq", "{e}");
}

#[test]
fn policy_files_refuse_the_same_sa_configurations() {
    let policy = "[[policy]]\nname = \"p\"\naction = \"protect\"\ndirection = \"outbound\"\n\
                  sa = [\"x\"]\n";
    for (extra, key) in [
        ("outer_ttl = 0", "outer_ttl"),
        ("udp_encap = [0, 4500]", "udp_encap"),
        ("replay_window = 64", "replay_window"),
        (
            "soft_lifetime = { seconds = 20 }\nhard_lifetime = { seconds = 10 }",
            "soft_lifetime.seconds",
        ),
        ("tfc_pad_to = 65535", "tfc_pad_to"),
    ] {
        let text = format!("{policy}{}", sa_file(extra));
        let e = Spd::from_toml(&text).expect_err(extra);
        assert_eq!(e.field(), format!("sa \"x\": {key}"), "{extra}: {e}");
        let findings = lint_toml(&text);
        assert!(
            findings
                .iter()
                .any(|f| f.code == "invalid" && f.message.contains(key)),
            "{extra}: {findings:?}"
        );
    }
}

#[test]
fn a_config_error_keeps_its_key_apart_from_its_context() {
    let e = ConfigError::new("hard_lifetime.bytes", "0 would expire the SA");
    assert_eq!((e.context(), e.key()), (None, "hard_lifetime.bytes"));
    let e = e.in_context("sa \"b1\"").in_context("branch.toml");
    assert_eq!(e.field(), "branch.toml: sa \"b1\": hard_lifetime.bytes");
    assert_eq!(e.key(), "hard_lifetime.bytes");
    assert_eq!(e.context(), Some("branch.toml: sa \"b1\""));
    assert_eq!(
        e.to_string(),
        "branch.toml: sa \"b1\": hard_lifetime.bytes: 0 would expire the SA"
    );
}
