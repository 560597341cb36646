//! Replays every seed of every fuzz target as a plain test, on stable Rust.
//!
//! `esp_decap` and `esp_roundtrip` run in-process through the library functions the
//! fuzz targets call. `replay_window` keeps its body in its target file, so its seeds are
//! run through the target binary itself (libFuzzer runs the files given as arguments
//! once each and exits non-zero on a crash); cargo builds it for this test.

use arbitrary::{Arbitrary, Unstructured};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

/// The same checks, on the crash reproducers kept under `regressions/<target>/`.
fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("regressions")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn esp_decap_corpus() {
    for path in seeds("esp_decap") {
        let data = fs::read(&path).expect("seed readable");
        println!("esp_decap {}", path.display());
        ipsec_fuzz::esp_decap(&data);
    }
}

#[test]
fn esp_roundtrip_corpus() {
    for path in seeds("esp_roundtrip") {
        let data = fs::read(&path).expect("seed readable");
        println!("esp_roundtrip {}", path.display());
        // As libfuzzer-sys does: inputs that do not parse are skipped.
        if let Ok(input) = ipsec_fuzz::RoundtripInput::arbitrary_take_rest(Unstructured::new(&data))
        {
            ipsec_fuzz::esp_roundtrip(&input);
        }
    }
}

#[test]
fn replay_window_corpus() {
    let files = seeds("replay_window");
    let status = Command::new(env!("CARGO_BIN_EXE_replay_window"))
        .args(&files)
        .status()
        .expect("replay_window target binary runs");
    assert!(
        status.success(),
        "replay_window crashed on a seed: {status}"
    );
}

#[test]
fn policy_parse_corpus() {
    for path in seeds("policy_parse") {
        let data = fs::read(&path).expect("seed readable");
        println!("policy_parse {}", path.display());
        ipsec_fuzz::spd::policy_parse(&data);
    }
}

/// The `secret-*` seeds put the generated key where it is a secret value, so that the
/// "secrets never in output" property of `policy_parse` has something to check.
#[test]
fn policy_parse_secret_seeds_hold_the_key_as_a_secret() {
    let mut checked = 0;
    for path in seeds("policy_parse") {
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if !name.starts_with("secret-") {
            continue;
        }
        let data = fs::read(&path).expect("seed readable");
        let key = ipsec_fuzz::spd::generated_key(&data);
        let text = String::from_utf8_lossy(&data).replace(ipsec_fuzz::spd::KEY_MARKER, &key);
        let spans = ipsec_core::secret::secret_spans(&text);
        assert!(
            spans.iter().any(|s| text[s.clone()].contains(&key)),
            "{name}: the key is nowhere a secret value"
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} secret seeds");
}

#[test]
fn spd_differential_corpus() {
    for path in seeds("spd_differential") {
        let data = fs::read(&path).expect("seed readable");
        println!("spd_differential {}", path.display());
        if let Ok(input) = ipsec_fuzz::spd::SpdInput::arbitrary_take_rest(Unstructured::new(&data))
        {
            ipsec_fuzz::spd::spd_differential(&input);
        }
    }
}

#[test]
fn reassembly_corpus() {
    for path in seeds("reassembly") {
        let data = fs::read(&path).expect("seed readable");
        println!("reassembly {}", path.display());
        ipsec_fuzz::reassembly::reassembly(&data);
    }
}

#[test]
fn sa_snapshot_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/sa_snapshot");
    let generated = ipsec_fuzz::snapshot::seeds();
    if std::env::var_os("IPSEC_BLESS_SEEDS").is_some() {
        fs::create_dir_all(&dir).expect("corpus directory");
        for (name, bytes) in &generated {
            fs::write(dir.join(name), bytes).expect("seed written");
        }
    }
    for (name, bytes) in &generated {
        println!("sa_snapshot (generated) {name}");
        ipsec_fuzz::snapshot::sa_snapshot(bytes);
        // Every truncation and a flipped byte at every position: typed errors, no panic.
        for n in 0..bytes.len() {
            ipsec_fuzz::snapshot::sa_snapshot(&bytes[..n]);
        }
        for i in 1..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x41;
            ipsec_fuzz::snapshot::sa_snapshot(&b);
        }
    }
    for path in seeds("sa_snapshot") {
        let data = fs::read(&path).expect("seed readable");
        println!("sa_snapshot {}", path.display());
        ipsec_fuzz::snapshot::sa_snapshot(&data);
    }
}

#[test]
fn regressions_stay_fixed() {
    for path in regressions("esp_decap") {
        ipsec_fuzz::esp_decap(&fs::read(&path).expect("readable"));
    }
    for path in regressions("reassembly") {
        ipsec_fuzz::reassembly::reassembly(&fs::read(&path).expect("readable"));
    }
    for path in regressions("esp_roundtrip") {
        let data = fs::read(&path).expect("readable");
        if let Ok(input) = ipsec_fuzz::RoundtripInput::arbitrary_take_rest(Unstructured::new(&data))
        {
            ipsec_fuzz::esp_roundtrip(&input);
        }
    }
}

#[test]
fn esp_fragmenting_corpus() {
    use ipsec_fuzz::fragmenting::{FragmentingInput, esp_fragmenting};
    for path in seeds("esp_fragmenting")
        .into_iter()
        .chain(regressions("esp_fragmenting"))
    {
        let data = fs::read(&path).expect("seed readable");
        println!("esp_fragmenting {}", path.display());
        if let Ok(input) = FragmentingInput::arbitrary_take_rest(Unstructured::new(&data)) {
            esp_fragmenting(&input);
        }
    }
}

/// The `spd_differential` body on fragments (random seeds rarely build them): a
/// port-specific PROTECT before a BYPASS of everything, and IPv4 and IPv6 first, tiny,
/// overlapping and later fragments of TCP, UDP and ICMP.
#[test]
fn spd_differential_fragments() {
    use ipsec_fuzz::spd::{FAddr, FPolicy, FPort, SpdInput};
    let protect = |protocol: u8, port: FPort, icmp: Option<(u8, Option<u8>)>| FPolicy {
        direction: 2,
        local: vec![FAddr::Prefix(0, 0, false), FAddr::Prefix(0, 0, true)],
        remote: vec![FAddr::Range(4, 9, false), FAddr::Range(4, 9, true)],
        protocol,
        local_port: port,
        remote_port: FPort::Omit,
        icmp,
        action: 0,
    };
    let policies = vec![
        protect(1, FPort::One(3), None),
        protect(3, FPort::Omit, Some((0, None))),
        FPolicy {
            direction: 2,
            local: vec![],
            remote: vec![],
            protocol: 0,
            local_port: FPort::Omit,
            remote_port: FPort::Omit,
            icmp: None,
            action: 1,
        },
    ];
    let v4 = |proto: u8, frag: u16, l4: &[u8]| {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 7, 0, 0, 64, proto, 0, 0, 10, 0, 0, 5, 10, 0, 0, 1,
        ];
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(l4);
        let n = p.len() as u16;
        p[2..4].copy_from_slice(&n.to_be_bytes());
        p
    };
    let v6 = |nh: u8, fo: u16, l4: &[u8]| {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[6] = 44;
        p[23] = 5;
        p[39] = 1;
        p[8] = 0x20;
        p[9] = 0x01;
        p[10] = 0x0d;
        p[11] = 0xb8;
        p[24..28].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        p.extend_from_slice(&[nh, 0]);
        p.extend_from_slice(&fo.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 9]);
        p.extend_from_slice(l4);
        let n = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&n.to_be_bytes());
        p
    };
    let tcp = [
        0, 9, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0,
    ];
    let packets = vec![
        v4(6, 0x2000, &tcp),
        v4(6, 0x2000, &tcp[..8]),
        v4(6, 0x2000, &tcp[..2]),
        v4(6, 0x2001, &tcp),
        v4(6, 0x0004, &tcp),
        v4(17, 0x0004, &tcp),
        v4(1, 0x2000, &tcp[..4]),
        v4(1, 0x0004, &tcp),
        v6(6, 1, &tcp),
        v6(6, 1 << 3, &tcp),
        v6(6, 5 << 3, &tcp),
        v6(60, 5 << 3, &tcp),
        v6(58, 5 << 3, &tcp),
        v6(6, 0, &tcp),
    ];
    ipsec_fuzz::spd::spd_differential(&SpdInput {
        policies,
        flows: Vec::new(),
        packets,
    });
}

/// `gateway_control`: the hand-made scenarios of [`ipsec_fuzz::control::scenarios`]
/// (each must reach the outcomes it is written for, and round-trip through the byte
/// coding), the seeds and the saved reproducers. The `scenario-*` seeds are those
/// scenarios coded: `IPSEC_BLESS_SEEDS=1 cargo test gateway_control` rewrites them.
#[test]
fn gateway_control_corpus() {
    use ipsec_fuzz::control::{Tally, decode, encode, gateway_control, run, scenarios};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/gateway_control");
    let scenarios = scenarios();
    for (i, ops) in scenarios.iter().enumerate() {
        let bytes = encode(ops);
        assert_eq!(format!("{:?}", decode(&bytes)), format!("{ops:?}"));
        if std::env::var_os("IPSEC_BLESS_SEEDS").is_some() {
            fs::create_dir_all(&dir).expect("corpus directory");
            fs::write(dir.join(format!("scenario-{i}")), &bytes).expect("seed written");
        }
    }
    // The rekey scenario reaches every outcome it is written for.
    let want = [
        ("AddPair ok", 4),
        ("AddSa Config", 1),
        ("AddSa DuplicateName", 1),
        ("DeleteSa SaInUse", 1),
        ("DeleteSa ok", 1),
        ("InstallPolicy Config", 1),
        ("InstallPolicy MissingSa", 1),
        ("InstallPolicy ok", 2),
        ("RekeySa ok", 2),
        ("RemovePolicy UnknownPolicy", 1),
        ("RetireSa ok", 1),
        ("cleartext discarded", 1),
        ("cleartext unprotected", 1),
        ("inbound Replay", 2),
        ("inbound TooOld", 1),
        ("inbound UnknownSpi", 1),
        ("inbound decrypted", 5),
        ("outbound protected", 77),
    ];
    let want: Tally = want.iter().map(|&(k, n)| (k.to_owned(), n)).collect();
    assert_eq!(run(&scenarios[0]), want);
    let want = [
        ("AddPair ok", 2),
        ("AddSa ok", 3),
        ("InstallPolicy MissingSa", 2),
        ("InstallPolicy ok", 5),
        ("RemovePolicy ok", 2),
        ("ReplacePolicy MissingSa", 1),
        ("ReplacePolicy ok", 1),
        ("RetireSa SaInUse", 1),
        ("RetireSa ok", 1),
        ("cleartext discarded", 1),
        ("cleartext unprotected", 1),
        ("inbound PolicyMismatch", 1),
        ("inbound Replay", 1),
        ("inbound decrypted", 2),
        ("outbound not protected", 2),
        ("outbound protected", 5),
    ];
    let want: Tally = want.iter().map(|&(k, n)| (k.to_owned(), n)).collect();
    assert_eq!(run(&scenarios[1]), want);
    // The lookup scenario: SAs share SPI 257, the longest match decrypts, the SPI-alone
    // SA takes the packet once the destination's SA is gone, then no SA matches.
    let want = [
        ("AddPair ok", 2),
        ("AddSa DuplicateSpi", 2),
        ("AddSa ok", 2),
        ("DeleteSa ok", 2),
        ("InstallPolicy ok", 2),
        ("RemovePolicy ok", 1),
        ("inbound AuthFailed", 1),
        ("inbound UnknownSpi", 1),
        ("inbound decrypted", 1),
        ("outbound protected", 3),
    ];
    let want: Tally = want.iter().map(|&(k, n)| (k.to_owned(), n)).collect();
    assert_eq!(run(&scenarios[2]), want);
    for path in seeds("gateway_control")
        .into_iter()
        .chain(regressions("gateway_control"))
    {
        let data = fs::read(&path).expect("seed readable");
        println!("gateway_control {}", path.display());
        gateway_control(&data);
    }
}

/// Only with `--features ipsec-mb` (which needs libipsec-mb-dev): intel-ipsec-mb's
/// AES-GCM against RustCrypto's on every seed.
#[cfg(feature = "ipsec-mb")]
#[test]
fn aead_ipsec_mb_corpus() {
    for path in seeds("aead_ipsec_mb")
        .into_iter()
        .chain(regressions("aead_ipsec_mb"))
    {
        let data = fs::read(&path).expect("seed readable");
        println!("aead_ipsec_mb {}", path.display());
        ipsec_fuzz::aead_ipsec_mb::aead_ipsec_mb(&data);
    }
}

/// AES-CBC + HMAC and AES-GCM bursts against one packet at a time on every seed (on
/// intel-ipsec-mb with `--features ipsec-mb`).
#[test]
fn cbc_burst_corpus() {
    for path in seeds("cbc_burst")
        .into_iter()
        .chain(regressions("cbc_burst"))
    {
        let data = fs::read(&path).expect("seed readable");
        println!("cbc_burst {}", path.display());
        ipsec_fuzz::cbc_burst::cbc_burst(&data);
    }
}

#[test]
fn gateway_burst_corpus() {
    for path in seeds("gateway_burst")
        .into_iter()
        .chain(regressions("gateway_burst"))
    {
        let data = fs::read(&path).expect("seed readable");
        println!("gateway_burst {}", path.display());
        ipsec_fuzz::gateway_burst::gateway_burst(&data);
    }
}
