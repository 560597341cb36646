//! Key hygiene (issue 11, item 3): no key material is left in memory that is given
//! back to the allocator.
//!
//! A checking global allocator reads every block as it is freed (and the old block of
//! every reallocation), then zeroes it, and counts the blocks that still held a piece of
//! one of the keys below: 16 characters of a key's hex text, or 8 bytes (4 for the AEAD
//! salt) of the decoded key. Each test loads, uses and drops configurations, SPDs, SAs and gateways
//! made from those keys, and the count must stay 0: every copy of a key was wiped
//! before its memory was freed. The keys themselves live in static memory (constants),
//! never on the heap of the test.
#![allow(unsafe_code)]

mod common;

use core::time::Duration;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use zeroize::Zeroize;

use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::lint_toml;
use ipsec_core::{Cipher, Direction, Gateway, Integrity, Mode, SaConfig, SecurityAssociation, Spd};

/// AES-128-GCM key followed by its 4-byte salt (`a517c39e`).
const GCM_HEX: &str = "3f9a1c7e5b2d4f60a8c3e1b7d9052f4ca517c39e";
/// AES-256-CBC key.
const CBC_HEX: &str = "71d2e48b06a3f95c2e7b18d46fa0c35982e61f7bd04a95c3e8172bd6f04c9a35";
/// HMAC-SHA-256 key.
const HMAC_HEX: &str = "c4e81a6f3b92d05e7a1fc8346be92d0f51a7e3c96b08d24f7ec135a98d2b6f04";

const fn unhex<const N: usize>(s: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("lower-case hex"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 2 * N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

static GCM: [u8; 20] = unhex(GCM_HEX);
static CBC: [u8; 32] = unhex(CBC_HEX);
static HMAC: [u8; 32] = unhex(HMAC_HEX);

const fn slice(s: &'static [u8], from: usize, to: usize) -> &'static [u8] {
    s.split_at(to).0.split_at(from).1
}

/// What a freed block must not hold.
static PATTERNS: [(&str, &[u8]); 12] = [
    ("GCM key, hex, start", slice(GCM_HEX.as_bytes(), 0, 16)),
    (
        "GCM key, hex, end (salt)",
        slice(GCM_HEX.as_bytes(), 24, 40),
    ),
    ("CBC key, hex, start", slice(CBC_HEX.as_bytes(), 0, 16)),
    ("CBC key, hex, end", slice(CBC_HEX.as_bytes(), 48, 64)),
    ("HMAC key, hex, start", slice(HMAC_HEX.as_bytes(), 0, 16)),
    ("HMAC key, hex, end", slice(HMAC_HEX.as_bytes(), 48, 64)),
    ("GCM key, bytes 0..8", slice(&GCM, 0, 8)),
    ("GCM key, bytes 8..16", slice(&GCM, 8, 16)),
    ("GCM salt", slice(&GCM, 16, 20)),
    ("CBC key, bytes 0..8", slice(&CBC, 0, 8)),
    ("CBC key, bytes 24..32", slice(&CBC, 24, 32)),
    ("HMAC key, bytes 0..8", slice(&HMAC, 0, 8)),
];

thread_local! {
    /// Blocks freed by this thread found holding each pattern (each test runs on a
    /// thread of its own, so tests running side by side do not mix their counts).
    static HITS: [Cell<usize>; 12] = const { [const { Cell::new(0) }; 12] };
}

/// The system allocator, reading each block before it is freed.
struct Checking;

fn check_freed(block: &[u8]) {
    for (i, (_, pattern)) in PATTERNS.iter().enumerate() {
        if block.windows(pattern.len()).any(|w| w == *pattern) {
            let _ = HITS.try_with(|h| h[i].set(h[i].get() + 1));
        }
    }
}

// SAFETY: allocation and deallocation are forwarded unchanged to `System`; `dealloc`
// reads and then zeroes the block (live and `layout.size()` bytes long until it is
// freed) first, and the check allocates nothing (a const-initialised thread-local, touched with `try_with` so
// never during thread teardown). `realloc` is the trait's default (alloc, copy,
// dealloc), so old blocks go through `dealloc` too.
unsafe impl GlobalAlloc for Checking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes allocated by `alloc`
        // above; it is only read, before it is freed.
        check_freed(unsafe { std::slice::from_raw_parts(ptr, layout.size()) });
        // Zeroed before it is reused, so that what a block holds when it is freed was
        // written during its own lifetime, not left over from a block freed earlier
        // (by another test, say) in the same memory. By `zeroize` (volatile writes):
        // a plain `write_bytes` right before `free` is a dead store the optimiser
        // removes, and in release builds blocks then came back holding what earlier
        // blocks held (the tests' own texts), which this test counted as leaks.
        // SAFETY: the same live block, written once before it is freed.
        unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) }.zeroize();
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Checking = Checking;

/// Runs `f` and returns the patterns found in blocks this thread freed meanwhile.
fn freed_secrets(f: impl FnOnce()) -> Vec<&'static str> {
    HITS.with(|h| h.iter().for_each(|c| c.set(0)));
    f();
    HITS.with(|h| {
        PATTERNS
            .iter()
            .zip(h)
            .filter(|(_, c)| c.get() > 0)
            .map(|((name, _), _)| *name)
            .collect()
    })
}

const POLICY: &str = concat!(
    r#"
[[policy]]
name = "branch"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "rest"
direction = "both"
action = "discard"

[[sa]]
name = "out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
key = ""#,
    "3f9a1c7e5b2d4f60a8c3e1b7d9052f4ca517c39e",
    r#""

[[sa]]
name = "in"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-256-cbc"
integrity = "hmac-sha256-128"
key = ""#,
    "71d2e48b06a3f95c2e7b18d46fa0c35982e61f7bd04a95c3e8172bd6f04c9a35",
    r#""
integrity_key = ""#,
    "c4e81a6f3b92d05e7a1fc8346be92d0f51a7e3c96b08d24f7ec135a98d2b6f04",
    "\"\n"
);

/// The head office's end of `out` (its inbound SA, with `out`'s key), in a file of its
/// own: a key serves one SA in a file.
const PEER: &str = concat!(
    r#"
[[sa]]
name = "in-gcm"
spi = 0x1000
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = ""#,
    "3f9a1c7e5b2d4f60a8c3e1b7d9052f4ca517c39e",
    "\"\n"
);

/// The test can fail: a plain copy of a key, freed, is found.
#[test]
fn the_checking_allocator_finds_an_unwiped_key() {
    let found = freed_secrets(|| {
        let copy = GCM.to_vec();
        drop(std::hint::black_box(copy));
        let text = POLICY.to_owned();
        drop(std::hint::black_box(text));
    });
    assert!(found.contains(&"GCM key, bytes 0..8"), "{found:?}");
    assert!(found.contains(&"GCM salt"), "{found:?}");
    assert!(found.contains(&"CBC key, hex, start"), "{found:?}");
}

#[test]
fn the_constants_are_the_keys_of_the_policy() {
    assert!(POLICY.contains(GCM_HEX) && POLICY.contains(CBC_HEX) && POLICY.contains(HMAC_HEX));
}

/// A policy file parsed, linted, made into a gateway that carries a packet, dropped.
#[test]
fn a_policy_file_and_its_gateway_leave_no_key_behind() {
    let path =
        std::env::temp_dir().join(format!("ipsec-freed-secrets-{}.toml", std::process::id()));
    std::fs::write(&path, POLICY).expect("write the policy file");
    let found = freed_secrets(|| {
        let spd = Spd::from_toml(POLICY).expect("policy loads");
        assert!(!spd.lint().is_empty());
        // A second owner (the Python `Gateway(spd)`) gets a copy, not the file's text.
        let copy = spd.clone();
        assert_eq!(copy.sas().len(), 2);
        assert_eq!(copy.policies(), spd.policies());
        drop(spd);
        let mut gateway = Gateway::new(copy, Duration::ZERO).expect("gateway");
        let mut packet = common::inner_v4(200, 0);
        packet[12..16].copy_from_slice(&[10, 0, 0, 5]);
        packet[16..20].copy_from_slice(&[10, 1, 0, 5]);
        common::fix_ipv4_checksum(&mut packet);
        let mut buf = vec![0u8; 2048];
        buf[128..128 + packet.len()].copy_from_slice(&packet);
        let mut p = ipsec_core::PacketBuf::new(&mut buf, 128, packet.len()).expect("buffer");
        let verdict = gateway.outbound(&mut p, Duration::ZERO);
        assert!(verdict.is_ok(), "{verdict:?}");
        drop(gateway);
        drop(Spd::from_toml_all_errors(POLICY).expect("policy loads"));
        drop(Spd::load(&path).expect("policy file loads"));
        assert!(lint_toml(POLICY).iter().all(|f| f.code != "invalid"));
    });
    let _ = std::fs::remove_file(&path);
    assert_eq!(found, Vec::<&str>::new());
}

/// SAs from an SA file, a packet encrypted and decrypted (the AEAD salt in use), dropped.
#[test]
fn sas_from_a_file_leave_no_key_behind() {
    let found = freed_secrets(|| {
        // Grown one SA at a time: the SAs are moved, and must leave no key behind.
        let mut sas = Vec::new();
        let peer = parse_sa_file(PEER).expect("peer SA file");
        for named in parse_sa_file(POLICY)
            .expect("SA file")
            .into_iter()
            .chain(peer)
        {
            sas.push(SecurityAssociation::new(named.config, Duration::ZERO).expect("SA"));
        }
        let inner = common::inner_v4(100, 0);
        let sealed = common::encrypt(&mut sas[0], &inner).expect("encrypt");
        let opened = common::decrypt(&mut sas[2], &sealed).expect("decrypt");
        assert_eq!(opened, inner);
        drop(sas);
    });
    assert_eq!(found, Vec::<&str>::new());
}

/// SAs made from configurations built in code (the Rust, C and Python constructors).
#[test]
fn sas_from_configurations_leave_no_key_behind() {
    let found = freed_secrets(|| {
        let out = SaConfig::new(
            0x7700,
            Direction::Outbound,
            Mode::Transport,
            Cipher::Aes128Gcm,
            &GCM,
        );
        let inb = SaConfig::new(
            0x7700,
            Direction::Inbound,
            Mode::Transport,
            Cipher::Aes128Gcm,
            &GCM,
        );
        let mut cbc = SaConfig::new(
            0x7800,
            Direction::Inbound,
            Mode::Transport,
            Cipher::Aes256Cbc,
            &CBC,
        );
        cbc.integrity(Integrity::HmacSha256_128, &HMAC);
        let mut out = SecurityAssociation::new(out, Duration::ZERO).expect("SA");
        let mut inb = SecurityAssociation::new(inb, Duration::ZERO).expect("SA");
        let cbc = SecurityAssociation::new(cbc, Duration::ZERO).expect("SA");
        let inner = common::inner_v4(100, 0);
        let sealed = common::encrypt(&mut out, &inner).expect("encrypt");
        assert_eq!(common::decrypt(&mut inb, &sealed).expect("decrypt"), inner);
        drop((out, inb, cbc));
    });
    assert_eq!(found, Vec::<&str>::new());
}

/// Snapshots hold keys (high availability): taking one, reading it back, restoring SAs
/// from it (and refusing a bad one) leaves no key in freed memory.
#[test]
fn snapshots_and_restored_sas_leave_no_key_behind() {
    use ipsec_core::{RestoreOptions, SaSnapshot};
    let found = freed_secrets(|| {
        let mut cbc = SaConfig::new(
            0x7900,
            Direction::Inbound,
            Mode::Transport,
            Cipher::Aes256Cbc,
            &CBC,
        );
        cbc.integrity(Integrity::HmacSha256_128, &HMAC);
        let gcm = SaConfig::new(
            0x7901,
            Direction::Outbound,
            Mode::Transport,
            Cipher::Aes128Gcm,
            &GCM,
        );
        for cfg in [cbc, gcm] {
            let sa = SecurityAssociation::new(cfg, Duration::ZERO).expect("SA");
            let snap = sa.snapshot(Duration::from_secs(1));
            let copy = SaSnapshot::from_bytes(snap.as_bytes()).expect("valid");
            let restored = SecurityAssociation::restore(
                copy.as_bytes(),
                &RestoreOptions::new(),
                Duration::ZERO,
            )
            .expect("restore");
            let mut bad = copy.as_bytes().to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 0xff;
            let _ = SecurityAssociation::restore(&bad, &RestoreOptions::new(), Duration::ZERO);
            // The test's own copy is wiped by hand (a caller's duty, as in C).
            bad.iter_mut().for_each(|b| *b = 0);
            drop((sa, snap, copy, restored, bad));
        }
    });
    assert_eq!(found, Vec::<&str>::new());
}

/// Secrets of the wrong type or in the wrong place are refused, and their values wiped.
#[test]
fn refused_secrets_leave_no_key_behind() {
    let shapes = [
        POLICY.replace(&format!("\"{GCM_HEX}\""), &format!("[\"{GCM_HEX}\"]")),
        POLICY.replace(
            &format!("\"{CBC_HEX}\""),
            &format!("{{ k = \"{CBC_HEX}\" }}"),
        ),
        POLICY.replace(
            "cipher = \"aes-128-gcm\"\n",
            "cipher = \"aes-128-gcm\"\nbogus = 1\n",
        ),
        // A misspelt secret field (an unknown field), and secrets written into a policy
        // table (unknown keys there).
        POLICY.replace("\nkey = ", "\nKey = "),
        POLICY.replace(
            "action = \"discard\"\n",
            &format!("action = \"discard\"\nkey = \"{GCM_HEX}\"\n"),
        ),
        POLICY.replace(
            "action = \"discard\"\n",
            &format!("action = \"discard\"\nintegrity_key = [\"{HMAC_HEX}\"]\n"),
        ),
    ];
    let found = freed_secrets(|| {
        for text in &shapes {
            assert!(Spd::from_toml(text).is_err());
            // (An SA file may hold policy tables: it ignores them.)
            drop(parse_sa_file(text));
            assert!(lint_toml(text).iter().any(|f| f.code == "invalid"));
        }
    });
    // The shapes' own texts are freed after the check, wiped by nobody: not counted.
    assert_eq!(found, Vec::<&str>::new());
}
