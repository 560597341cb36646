//! End-to-end tests of the `ipsec` binary.

use std::path::Path;

mod common;
use common::{TempDir, checksum, ipsec};

/// The branch gateway's SA file: it encrypts with "branch-out". (A key serves one SA:
/// the head office's copy of that SA, the inbound "hq-in", is in its own file,
/// `HQ_SA_TOML`, as it would be on the head office gateway.)
const SA_TOML: &str = r#"
[[sa]]
name = "branch-out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
tunnel_src = "198.51.100.2"
tunnel_dst = "192.0.2.1"

[[sa]]
name = "other-in"
spi = 0x2000
direction = "inbound"
mode = "tunnel"
cipher = "aes-256-cbc"
key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
integrity = "hmac-sha256-128"
integrity_key = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
"#;

/// The head office gateway's SA file: it decrypts what "branch-out" sends.
const HQ_SA_TOML: &str = r#"
[[sa]]
name = "hq-in"
spi = 0x1000
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
"#;

/// Writes both SA files into `dir`: (the branch's `sa.toml`, the head office's `hq.toml`).
fn sa_files(dir: &TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (sa, hq) = (dir.path("sa.toml"), dir.path("hq.toml"));
    std::fs::write(&sa, SA_TOML).unwrap();
    std::fs::write(&hq, HQ_SA_TOML).unwrap();
    (sa, hq)
}

/// IPv4/UDP packet with a recognisable payload.
fn ipv4_udp(id: u16, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 1, 0, 15]);
    p[16..20].copy_from_slice(&[10, 0, 0, 10]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&3389u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// IPv6/UDP packet (UDP checksum left 0: not checked by ESP).
fn ipv6_udp(payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 48 + payload.len()];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..10].copy_from_slice(&[0x20, 0x01]);
    p[23] = 1;
    p[24..26].copy_from_slice(&[0x20, 0x01]);
    p[39] = 2;
    p[40..42].copy_from_slice(&5000u16.to_be_bytes());
    p[42..44].copy_from_slice(&443u16.to_be_bytes());
    p[44..46].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    p
}

fn ethernet(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(if ip[0] >> 4 == 6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    f.extend_from_slice(ip);
    f
}

fn write_pcap(path: &Path, linktype: u32, packets: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, linktype] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, p) in packets.iter().enumerate() {
        for v in [
            1_700_000_000 + i as u32,
            250,
            p.len() as u32,
            p.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    std::fs::write(path, out).expect("write pcap");
}

fn read_pcap(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let b = std::fs::read(path).expect("read pcap");
    let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(
        u(0),
        0xa1b2_c3d4,
        "written with the input's (micro) resolution"
    );
    let linktype = u(20);
    let mut at = 24;
    let mut pkts = Vec::new();
    while at < b.len() {
        let len = u(at + 8) as usize;
        pkts.push(b[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    (linktype, pkts)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn roundtrip(linktype: u32, frame: fn(&[u8]) -> Vec<u8>, tag: &str) {
    let dir = TempDir::new(tag);
    let (sa, hq) = sa_files(&dir);
    let secret = b"cleartext that must not be on the wire";
    let ips = [ipv4_udp(1, secret), ipv6_udp(secret), ipv4_udp(2, b"short")];
    let frames: Vec<Vec<u8>> = ips.iter().map(|p| frame(p)).collect();
    let (input, enc, dec) = (
        dir.path("in.pcap"),
        dir.path("enc.pcap"),
        dir.path("dec.pcap"),
    );
    write_pcap(&input, linktype, &frames);

    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&enc)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("3 packets in, 3 encrypted out"), "{stdout}");
    let (lt, wire) = read_pcap(&enc);
    assert_eq!(lt, linktype);
    assert_eq!(wire.len(), 3);
    let off = frame(&[0x45])[..].len() - 1;
    for w in &wire {
        assert!(!contains(w, secret), "payload visible on the wire");
        assert_eq!(w[off] >> 4, 4, "outer IPv4");
        assert_eq!(w[off + 9], 50, "ESP");
        if off > 0 {
            assert_eq!(
                &w[12..14],
                &[0x08, 0x00],
                "EtherType fixed for the outer IPv4"
            );
        }
    }

    let o = ipsec(&["pcap", "decrypt", "--sa", s(&hq), s(&enc), s(&dec)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (lt, back) = read_pcap(&dec);
    assert_eq!(lt, linktype);
    assert_eq!(back, frames, "decrypt gives back the original frames");
}

#[test]
fn pcap_roundtrip_raw_ip() {
    roundtrip(101, |p| p.to_vec(), "raw");
}

#[test]
fn pcap_roundtrip_ethernet() {
    roundtrip(1, ethernet, "eth");
}

#[test]
fn pcap_json_reports_auth_failed_unknown_spi_and_replay() {
    let dir = TempDir::new("json");
    let (sa, hq) = sa_files(&dir);
    let (input, enc) = (dir.path("in.pcap"), dir.path("enc.pcap"));
    write_pcap(
        &input,
        101,
        &[
            ipv4_udp(1, b"one one one"),
            ipv4_udp(2, b"two two two"),
            ipv4_udp(3, b"three"),
        ],
    );
    let o = ipsec(&[
        "pcap",
        "encrypt",
        "--json",
        "--name",
        "branch-out",
        "--sa",
        s(&sa),
        s(&input),
        s(&enc),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 3);
    let (_, wire) = read_pcap(&enc);

    let mut tampered = wire[1].clone();
    let n = tampered.len();
    tampered[n - 20] ^= 0x04;
    let mut wrong_spi = wire[2].clone();
    wrong_spi[20..24].copy_from_slice(&0x0bad_0bad_u32.to_be_bytes());
    let not_esp = ipv4_udp(9, b"plain");
    let attack = vec![
        wire[0].clone(),
        tampered,
        wrong_spi,
        wire[0].clone(),
        wire[1].clone(),
        not_esp,
    ];
    let (atk, out) = (dir.path("attack.pcap"), dir.path("out.pcap"));
    write_pcap(&atk, 101, &attack);
    let o = ipsec(&[
        "pcap",
        "decrypt",
        "--json",
        "--sa",
        s(&hq),
        s(&atk),
        s(&out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "packet failures are reported, not fatal"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("valid JSON line"))
        .collect();
    let expect = [
        None,
        Some("auth_failed"),
        Some("unknown_spi"),
        Some("replay"),
        None,
        Some("malformed"),
    ];
    assert_eq!(lines.len(), expect.len());
    for (i, (line, want)) in lines.iter().zip(expect).enumerate() {
        assert_eq!(line["index"], i, "{line}");
        assert_eq!(line["ok"], want.is_none(), "{line}");
        match want {
            None => assert!(
                line["error"].is_null() && line["detail"].is_null(),
                "{line}"
            ),
            Some(reason) => {
                assert_eq!(line["error"], reason, "{line}");
                assert!(
                    line["detail"].as_str().is_some_and(|d| !d.is_empty()),
                    "{line}"
                );
            }
        }
    }
    assert!(lines[2]["detail"].as_str().unwrap().contains("0x0bad0bad"));
    let (_, good) = read_pcap(&out);
    assert_eq!(
        good,
        vec![ipv4_udp(1, b"one one one"), ipv4_udp(2, b"two two two")]
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("6 packets in, 2 decrypted out"), "{stderr}");
    assert!(
        stderr.contains("auth_failed") && stderr.contains("replay"),
        "{stderr}"
    );

    let o = ipsec(&[
        "pcap",
        "decrypt",
        "--strict",
        "--sa",
        s(&hq),
        s(&atk),
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1), "--strict fails on drops");
}

#[test]
fn bad_sa_file_exits_2_naming_sa_and_key() {
    let dir = TempDir::new("badsa");
    let input = dir.path("in.pcap");
    write_pcap(&input, 101, &[ipv4_udp(1, b"x")]);
    let out = dir.path("out.pcap");
    let cases = [
        (
            SA_TOML.replace(
                "cipher = \"aes-256-cbc\"",
                "cipher = \"aes-256-cbc\"\nkye = 1",
            ),
            ["other-in", "kye"],
        ),
        (
            SA_TOML.replace("01020304\"", "010203\""),
            ["branch-out", "key"],
        ),
        (
            SA_TOML.replace("192.0.2.1\"", "192.0.2.300\""),
            ["branch-out", "tunnel_dst"],
        ),
    ];
    for (text, words) in cases {
        let sa = dir.path("sa.toml");
        std::fs::write(&sa, text).unwrap();
        let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&out)]);
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("sa.toml"), "{err}");
        for w in words {
            assert!(err.contains(w), "{w:?} missing in {err}");
        }
    }
}

#[test]
fn sa_files_that_cannot_work_exit_2_naming_the_field() {
    let dir = TempDir::new("refusedsa");
    let input = dir.path("in.pcap");
    write_pcap(&input, 101, &[ipv4_udp(1, b"x")]);
    let out = dir.path("out.pcap");
    let branch_out = "tunnel_dst = \"192.0.2.1\"\n";
    for (extra, field) in [
        ("outer_ttl = 0", "outer_ttl: 0"),
        ("udp_encap = [0, 0]", "udp_encap: the source port is 0"),
        (
            "soft_lifetime = { packets = 10 }\nhard_lifetime = { packets = 10 }",
            "soft_lifetime.packets: 10 is not below",
        ),
        (
            "replay_window = 64",
            "replay_window: 64 given for an outbound SA",
        ),
        ("tfc_pad_to = 65535", "tfc_pad_to: 65535"),
        ("seq = \"0x1_0000_0000_0000_0000\"", "seq: "),
    ] {
        let sa = dir.path("sa.toml");
        std::fs::write(
            &sa,
            SA_TOML.replace(branch_out, &format!("{branch_out}{extra}\n")),
        )
        .unwrap();
        let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&out)]);
        assert_eq!(o.status.code(), Some(2), "{extra}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("sa \"branch-out\": {field}")),
            "{extra}: {err}"
        );
    }
    // A missing key is "missing".
    let sa = dir.path("sa.toml");
    let no_key = SA_TOML.replacen(
        "key = \"00112233445566778899aabbccddeeff01020304\"\n",
        "",
        1,
    );
    std::fs::write(&sa, no_key).unwrap();
    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sa \"branch-out\": key: missing"), "{err}");
}

#[test]
fn sa_file_seq_above_2_63_as_a_hex_string() {
    // TOML integers stop at 2^63-1; an ESN sequence number may use all 64 bits.
    let dir = TempDir::new("esnseq");
    let input = dir.path("in.pcap");
    write_pcap(&input, 101, &[ipv4_udp(1, b"esn")]);
    let out = dir.path("out.pcap");
    let sa = dir.path("sa.toml");
    let branch_out = "tunnel_dst = \"192.0.2.1\"\n";
    let text = SA_TOML.replace(
        branch_out,
        &format!("{branch_out}esn = true\nseq = \"0x8765_4321_0000_0005\"\n"),
    );
    std::fs::write(&sa, text).unwrap();
    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&out)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (_, packets) = read_pcap(&out);
    // Outer IPv4 (20 bytes), then SPI and the low 32 bits of the next number.
    assert_eq!(&packets[0][20..28], &[0, 0, 0x10, 0, 0, 0, 0, 6]);
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new("usage");
    let sa = dir.path("sa.toml");
    std::fs::write(&sa, SA_TOML).unwrap();
    let input = dir.path("in.pcap");
    write_pcap(&input, 101, &[ipv4_udp(1, b"x")]);
    let out = dir.path("out.pcap");
    let missing = dir.path("missing.pcap");
    let garbage = dir.path("garbage.pcap");
    std::fs::write(&garbage, b"this is not a capture file at all").unwrap();
    let wrong_dir = [
        "pcap",
        "encrypt",
        "--name",
        "other-in",
        "--sa",
        s(&sa),
        s(&input),
        s(&out),
    ];
    let no_such = [
        "pcap",
        "encrypt",
        "--name",
        "nope",
        "--sa",
        s(&sa),
        s(&input),
        s(&out),
    ];
    let no_file = ["pcap", "decrypt", "--sa", s(&sa), s(&missing), s(&out)];
    let not_pcap = ["pcap", "decrypt", "--sa", s(&sa), s(&garbage), s(&out)];
    for args in [
        &wrong_dir[..],
        &no_such,
        &no_file,
        &not_pcap,
        &["frobnicate"],
        &["bench", "--seconds", "-1"],
    ] {
        let o = ipsec(args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.stderr.is_empty());
    }
}

#[test]
fn demo_exits_0_and_prints_the_monitor() {
    let o = ipsec(&["demo"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "SA monitor",
        "PACKETS",
        "0x00001001",
        "auth_failed=1",
        "replay=1",
        "DISCARD",
        "PROTECT",
        "All expectations held",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn bench_json_records_have_all_keys() {
    let o = ipsec(&["bench", "--json", "--seconds", "0.002"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ops = std::collections::BTreeSet::new();
    let mut backends = std::collections::BTreeSet::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON record");
        for k in [
            "op",
            "cipher",
            "backend",
            "size",
            "burst",
            "ns_per_packet",
            "gbps",
        ] {
            assert!(!v[k].is_null(), "{k} missing in {line}");
        }
        assert!(v["ns_per_packet"].as_f64().unwrap() > 0.0);
        ops.insert(v["op"].as_str().unwrap().to_string());
        backends.insert(v["backend"].as_str().unwrap().to_string());
        assert!([64, 512, 1420].contains(&v["size"].as_u64().unwrap()));
    }
    for op in ["encrypt", "decrypt", "aead-seal", "aead-open"] {
        assert!(ops.contains(op), "{op} missing");
    }
    for b in ["rustcrypto", "ring", "aws-lc-rs"] {
        assert!(backends.contains(b), "{b} missing");
    }
    assert!(stdout.contains("\"burst\":32"));
}

/// `--openssl` adds `openssl speed` rows marked as not per packet; every other row is a
/// per-packet measurement. Skipped (with a message) where no `openssl` command exists.
#[test]
fn bench_openssl_speed_rows_are_marked_not_per_packet() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("no openssl command: --openssl not tested");
        return;
    }
    let o = ipsec(&["bench", "--json", "--openssl", "--seconds", "0.002"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut speed_rows = 0;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON record");
        let from_speed = v["backend"] == "openssl-speed";
        assert_eq!(v["per_packet"].as_bool(), Some(!from_speed), "{line}");
        assert_eq!(v["copy_included"].as_bool(), Some(!from_speed), "{line}");
        if from_speed {
            speed_rows += 1;
            assert_eq!(v["op"], "aead-seal", "{line}");
            assert!(v["ns_per_packet"].as_f64().unwrap() > 0.0, "{line}");
        }
    }
    // Three AEADs at three sizes.
    assert_eq!(speed_rows, 9, "{stdout}");
}

#[test]
fn pcap_roundtrip_nat_t_over_ipv6_outer() {
    let dir = TempDir::new("natt6");
    let sa = dir.path("sa.toml");
    let text = SA_TOML
        .replace("\"198.51.100.2\"", "\"2001:db8:b::2\"")
        .replace(
            "tunnel_dst = \"192.0.2.1\"",
            "tunnel_dst = \"2001:db8:a::1\"\nudp_encap = [4500, 4500]",
        );
    std::fs::write(&sa, text).unwrap();
    let frames = vec![
        ethernet(&ipv4_udp(1, b"nat traversal payload")),
        ethernet(&ipv6_udp(b"v6 in v6")),
    ];
    let (input, enc, dec) = (
        dir.path("in.pcap"),
        dir.path("enc.pcap"),
        dir.path("dec.pcap"),
    );
    write_pcap(&input, 1, &frames);
    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&enc)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, wire) = read_pcap(&enc);
    assert_eq!(wire.len(), 2);
    for w in &wire {
        assert_eq!(
            &w[12..14],
            &[0x86, 0xdd],
            "EtherType fixed for the outer IPv6"
        );
        assert_eq!(w[14 + 6], 17, "UDP-encapsulated ESP");
        assert_eq!(&w[14 + 42..14 + 44], &4500u16.to_be_bytes());
    }
    let hq = dir.path("hq.toml");
    std::fs::write(&hq, HQ_SA_TOML).unwrap();
    let o = ipsec(&["pcap", "decrypt", "--sa", s(&hq), s(&enc), s(&dec)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_pcap(&dec).1, frames);
}

/// The outer IPv4 packet `ip` (20-byte header) cut into fragments of `size` bytes.
fn fragments_v4(ip: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let payload = &ip[20..];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = ip[..20].to_vec();
            f[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            f[4..6].copy_from_slice(&id.to_be_bytes());
            let more = (i + 1) * size < payload.len();
            let field = (i * size / 8) as u16 | if more { 0x2000 } else { 0 };
            f[6..8].copy_from_slice(&field.to_be_bytes());
            f[10..12].fill(0);
            let c = checksum(&f[..20]);
            f[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

#[test]
fn pcap_decrypt_reassembles_fragmented_esp() {
    let dir = TempDir::new("frag");
    let (sa, hq) = sa_files(&dir);
    let plain = [ipv4_udp(1, &[0x61; 1400]), ipv4_udp(2, b"small")];
    let (input, enc, frag, dec) = (
        dir.path("in.pcap"),
        dir.path("enc.pcap"),
        dir.path("frag.pcap"),
        dir.path("dec.pcap"),
    );
    write_pcap(&input, 101, &plain);
    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&enc)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, wire) = read_pcap(&enc);
    // The big ESP packet cut in three on the path, reordered, around the small one;
    // then the first fragment of a datagram that never completes.
    let f = fragments_v4(&wire[0], 512, 0x77);
    assert_eq!(f.len(), 3);
    let lost = fragments_v4(&wire[0], 512, 0x78);
    let frames = vec![
        f[2].clone(),
        wire[1].clone(),
        f[0].clone(),
        f[1].clone(),
        lost[0].clone(),
    ];
    write_pcap(&frag, 101, &frames);
    let o = ipsec(&[
        "pcap",
        "decrypt",
        "--json",
        "--sa",
        s(&hq),
        s(&frag),
        s(&dec),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let reassembly: Vec<&serde_json::Value> = lines.iter().map(|l| &l["reassembly"]).collect();
    assert_eq!(
        reassembly,
        [
            &serde_json::json!("held"),
            &serde_json::Value::Null,
            &serde_json::json!("held"),
            &serde_json::json!("complete"),
            &serde_json::json!("held"),
        ],
        "{stdout}"
    );
    assert!(lines.iter().all(|l| l["ok"] == true), "{stdout}");
    assert_eq!(read_pcap(&dec).1, vec![plain[1].clone(), plain[0].clone()]);
    assert!(stderr.contains("2 decrypted out"), "{stderr}");
    assert!(stderr.contains("1 dropped"), "{stderr}");
    assert!(stderr.contains("fragment_timeout"), "{stderr}");
    assert!(
        stderr.contains("datagrams reassembled from fragments: 1"),
        "{stderr}"
    );
    // --strict: the fragment of the datagram that never completed is a drop.
    let o = ipsec(&[
        "pcap",
        "decrypt",
        "--strict",
        "--sa",
        s(&hq),
        s(&frag),
        s(&dec),
    ]);
    assert_eq!(o.status.code(), Some(1));
}

/// The ESP sequence numbers of the packets of a raw-IP capture with an outer IPv4
/// header (ESP starts at byte 20).
fn esp_seqs(path: &Path) -> Vec<u32> {
    read_pcap(path)
        .1
        .iter()
        .map(|p| u32::from_be_bytes(p[24..28].try_into().unwrap()))
        .collect()
}

/// Issue 11, item 2: an SA file whose key serves two SAs (here the branch's outbound SA
/// and the head office's inbound copy of it, in one file) is refused by `pcap encrypt`
/// and `pcap decrypt` with an error that names both SAs and not the key.
#[test]
fn pcap_refuses_an_sa_file_whose_key_serves_two_sas() {
    let dir = TempDir::new("sharedkey");
    let (input, out) = (dir.path("in.pcap"), dir.path("out.pcap"));
    write_pcap(&input, 101, &[ipv4_udp(1, b"x")]);
    let sa = dir.path("both-ends.toml");
    std::fs::write(&sa, format!("{SA_TOML}\n{HQ_SA_TOML}")).unwrap();
    for op in ["encrypt", "decrypt"] {
        let o = ipsec(&["pcap", op, "--sa", s(&sa), s(&input), s(&out)]);
        assert_eq!(o.status.code(), Some(2), "{op}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("sa \"hq-in\": key: the same key as the key of sa \"branch-out\""),
            "{op}: {err}"
        );
        assert!(err.contains("nonces repeat"), "{op}: {err}");
        assert!(!err.contains("00112233"), "{op}: key bytes shown: {err}");
    }
}

/// Issue 11, item 2: every `pcap encrypt` run starts after the SA file's `seq`; an AEAD
/// SA says loudly that this repeats nonces, and `--seq-from` / `--save-seq` continue.
#[test]
fn pcap_encrypt_warns_of_nonce_reuse_and_continues_with_seq_from_or_save_seq() {
    let dir = TempDir::new("seq");
    let (sa, hq) = sa_files(&dir);
    let (input, enc, dec) = (
        dir.path("in.pcap"),
        dir.path("enc.pcap"),
        dir.path("dec.pcap"),
    );
    let plain = [ipv4_udp(1, b"one"), ipv4_udp(2, b"two")];
    write_pcap(&input, 101, &plain);
    let encrypt = |extra: &[&str]| {
        let mut args = vec!["pcap", "encrypt", "--sa", s(&sa)];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[s(&input), s(&enc)]);
        let o = ipsec(&args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    // Without options: a warning on stderr; the summary names the last number used.
    let (stdout, stderr) = encrypt(&[]);
    assert!(
        stderr.contains("ipsec: warning: sa \"branch-out\" (aes-128-gcm)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("repeats them under the same key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--seq-from") && stderr.contains("--save-seq"),
        "{stderr}"
    );
    assert!(
        stdout.contains("last sequence number used: 2 (continue with --seq-from 2)"),
        "{stdout}"
    );
    assert_eq!(esp_seqs(&enc), [1, 2]);
    // The danger the warning names: a second run repeats the numbers.
    encrypt(&[]);
    assert_eq!(esp_seqs(&enc), [1, 2]);

    // --seq-from continues without touching the file, and the peer decrypts it.
    let (stdout, stderr) = encrypt(&["--seq-from", "2"]);
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.contains("sequence numbers 3..=4 used"), "{stdout}");
    assert_eq!(esp_seqs(&enc), [3, 4]);
    assert_eq!(std::fs::read_to_string(&sa).unwrap(), SA_TOML);
    let o = ipsec(&["pcap", "decrypt", "--sa", s(&hq), s(&enc), s(&dec)]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(read_pcap(&dec).1, plain);

    // --save-seq records the last number in the file (only that value changes), and the
    // next run, with or without it, continues after it.
    let (stdout, _) = encrypt(&["--save-seq"]);
    assert_eq!(esp_seqs(&enc), [1, 2]);
    assert!(stdout.contains("seq = 2 saved to"), "{stdout}");
    let saved = std::fs::read_to_string(&sa).unwrap();
    let expected = SA_TOML.replace(
        "tunnel_dst = \"192.0.2.1\"\n",
        "tunnel_dst = \"192.0.2.1\"\nseq = 2\n",
    );
    assert_eq!(saved, expected);
    encrypt(&["--save-seq"]);
    assert_eq!(esp_seqs(&enc), [3, 4]);
    assert_eq!(
        std::fs::read_to_string(&sa).unwrap(),
        expected.replace("seq = 2", "seq = 4")
    );
    let (_, stderr) = encrypt(&[]);
    assert_eq!(esp_seqs(&enc), [5, 6]);
    assert!(stderr.contains("starts after seq = 4"), "{stderr}");

    // Numbers the file says were used are refused.
    let o = ipsec(&[
        "pcap",
        "encrypt",
        "--seq-from",
        "3",
        "--sa",
        s(&sa),
        s(&input),
        s(&enc),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--seq-from 3 is below sa \"branch-out\"'s seq = 4"),
        "{err}"
    );
}
