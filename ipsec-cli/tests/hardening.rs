//! Issue 11, "Hardening": `pcap audit` on captures it cannot fully read (header-only
//! snapshot lengths, broken records) and its IKE / NAT-T / ESP checks; every command
//! when the reader of its output goes away (EPIPE); bounded memory and bounded error
//! messages on hostile input (huge lines and fields, invalid UTF-8, huge captures).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{BIN, TempDir, esp, ether, ipsec, ipv4, tcp, udp};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/branch-office.toml")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

// --- packets and captures ---------------------------------------------------------------

/// A classic pcap header (little-endian, microseconds).
fn pcap_header(linktype: u32, snaplen: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, snaplen, linktype] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// One record: `frame` cut to `snaplen` bytes, its length on the wire kept.
fn record(out: &mut Vec<u8>, i: usize, frame: &[u8], snaplen: usize) {
    let cap = frame.len().min(snaplen);
    for v in [1_700_000_000 + i as u32, 0, cap as u32, frame.len() as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&frame[..cap]);
}

/// A capture of `frames`, each cut to `snaplen` bytes as `tcpdump -s SNAPLEN` cuts them.
fn pcap(linktype: u32, frames: &[Vec<u8>], snaplen: usize) -> Vec<u8> {
    let mut out = pcap_header(linktype, snaplen as u32);
    for (i, f) in frames.iter().enumerate() {
        record(&mut out, i, f, snaplen);
    }
    out
}

fn audit_file(policy: &Path, cap: &Path, json: bool) -> Output {
    let mut args = vec!["pcap", "audit", s(policy), s(cap)];
    if json {
        args.push("--json");
    }
    ipsec(&args)
}

fn audit(dir: &TempDir, policy: &Path, bytes: &[u8], json: bool) -> Output {
    let cap = dir.path("capture.pcap");
    std::fs::write(&cap, bytes).unwrap();
    audit_file(policy, &cap, json)
}

const HO: [u8; 4] = [192, 0, 2, 1];
const B1: [u8; 4] = [198, 51, 100, 2];
const B2: [u8; 4] = [203, 0, 113, 2];
const BRANCH_PC: [u8; 4] = [10, 1, 0, 15];
const SERVER: [u8; 4] = [10, 0, 0, 10];

/// What the example's gateways exchange: IKE, ESP both ways, ESP in UDP, a keepalive.
fn tunnel_traffic() -> Vec<Vec<u8>> {
    let mut v = vec![
        ipv4(HO, B1, 17, &udp(500, 500, &[0x11; 40])),
        ipv4(B1, HO, 17, &udp(500, 500, &[0x22; 40])),
    ];
    for seq in 1..=3 {
        v.push(ipv4(B1, HO, 50, &esp(0x2001, seq)));
        v.push(ipv4(HO, B1, 50, &esp(0x1001, seq)));
    }
    v.push(ipv4(B2, HO, 17, &udp(4500, 4500, &esp(0x2002, 1))));
    v.push(ipv4(B2, HO, 17, &udp(4500, 4500, &[0xff])));
    v
}

/// Remote desktop from a branch PC to the terminal server, in the clear: the example's
/// policy "b1-rdp" protects it.
fn rdp_in_the_clear() -> Vec<u8> {
    ipv4(BRANCH_PC, SERVER, 6, &tcp(50000, 3389, &[b'p'; 400]))
}

// --- item 5: header-only captures, and what cannot be read -------------------------

/// `tcpdump -s 54` (Ethernet + IPv4 + TCP headers) and `-s 96` keep only the start of
/// each packet; the audit decides from the headers, and a cleartext RDP packet is
/// still a leak.
#[test]
fn audit_judges_header_only_records() {
    let dir = TempDir::new("hard-snaplen");
    let policy = example();
    let frames: Vec<Vec<u8>> = tunnel_traffic()
        .into_iter()
        .chain([rdp_in_the_clear()])
        .map(|p| ether(&p))
        .collect();
    // 38: Ethernet + IPv4 + the 4 bytes of ports, the least the lookup needs.
    let rdp = ether(&rdp_in_the_clear());
    let o = audit(&dir, &policy, &pcap(1, &[rdp], 38), true);
    assert_eq!(o.status.code(), Some(1), "-s 38: {}", stderr(&o));
    let v = json_lines(&o);
    assert_eq!(v[0]["kind"], "leak", "{v:?}");
    assert_eq!(v[1]["verdict"], "fail", "{v:?}");
    // 54: the Ethernet, IPv4 and TCP headers (`tcpdump -s 54`); 96: a little more.
    for snaplen in [54, 96] {
        let o = audit(&dir, &policy, &pcap(1, &frames, snaplen), true);
        assert_eq!(o.status.code(), Some(1), "-s {snaplen}: {}", stderr(&o));
        let v = json_lines(&o);
        let leaks: Vec<&Value> = v.iter().filter(|x| x["kind"] == "leak").collect();
        assert_eq!(leaks.len(), 1, "-s {snaplen}: {v:?}");
        assert_eq!(leaks[0]["packet"], frames.len());
        assert_eq!(leaks[0]["policy"], "b1-rdp");
        assert_eq!(leaks[0]["dst_port"], 3389);
        let sum = v.last().unwrap();
        assert_eq!(sum["verdict"], "fail", "{sum}");
        assert_eq!(sum["unreadable"], 0, "{sum}");
        assert_eq!(sum["ike"], 3, "{sum}");
        assert_eq!(sum["esp"][0]["packets"], 3, "{sum}");
        assert_eq!(sum["esp_in_udp"][0]["spi"], "0x00002002", "{sum}");
        assert!(sum["truncated"].as_u64().unwrap() >= 1, "{sum}");
    }
    // Raw IP, 24 bytes: the IPv4 header and the ports.
    let raw: Vec<Vec<u8>> = vec![rdp_in_the_clear()];
    let o = audit(&dir, &policy, &pcap(101, &raw, 24), false);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("LEAK") && text.contains("b1-rdp"), "{text}");
    assert!(!text.contains("no plaintext leak"), "{text}");
}

/// Records that cannot be judged (IP header cut, ports cut, SPI cut, a frame shorter
/// than its Ethernet header, a file that ends inside a record) are findings of their
/// own and make the audit inconclusive (exit 3), never "no leak".
#[test]
fn audit_is_inconclusive_on_what_it_cannot_read() {
    let dir = TempDir::new("hard-unreadable");
    let policy = example();
    let clean: Vec<Vec<u8>> = tunnel_traffic().iter().map(|p| ether(p)).collect();
    let o = audit(&dir, &policy, &pcap(1, &clean, 65535), false);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no plaintext leak"));

    let rdp = ether(&rdp_in_the_clear());
    let esp_pkt = ether(&ipv4(B1, HO, 50, &esp(0x2001, 9)));
    let cases: [(&str, Vec<u8>, usize); 4] = [
        ("ip_header", rdp.clone(), 14 + 16),
        ("transport_header", rdp.clone(), 14 + 20 + 2),
        ("transport_header", esp_pkt, 14 + 20 + 3),
        ("frame", rdp[..10].to_vec(), 65535),
    ];
    for (reason, frame, snaplen) in cases {
        let mut bytes = pcap(1, &clean, 65535);
        record(&mut bytes, clean.len(), &frame, snaplen);
        let o = audit(&dir, &policy, &bytes, true);
        assert_eq!(o.status.code(), Some(3), "{reason}: {}", stderr(&o));
        assert!(stderr(&o).contains("INCONCLUSIVE"), "{}", stderr(&o));
        let v = json_lines(&o);
        let bad: Vec<&Value> = v.iter().filter(|x| x["kind"] == "unreadable").collect();
        assert_eq!(bad.len(), 1, "{v:?}");
        assert_eq!(bad[0]["reason"], reason, "{}", bad[0]);
        assert_eq!(bad[0]["packet"], clean.len() + 1, "{}", bad[0]);
        assert!(bad[0]["detail"].as_str().is_some_and(|d| !d.is_empty()));
        let sum = v.last().unwrap();
        assert_eq!(sum["verdict"], "inconclusive", "{sum}");
        assert_eq!(sum["leaks"], 0, "{sum}");
        assert_eq!(sum["unreadable"], 1, "{sum}");
        // The human report says so, and never "no leak".
        let o = audit(&dir, &policy, &bytes, false);
        assert_eq!(o.status.code(), Some(3));
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("UNREADABLE") && text.contains("INCONCLUSIVE"),
            "{text}"
        );
        assert!(!text.contains("no plaintext leak"), "{text}");
    }

    // A file that ends inside a record: what was read is judged, the rest is a finding.
    let mut bytes = pcap(1, &clean, 65535);
    let mut last = Vec::new();
    record(&mut last, 99, &rdp, 65535);
    bytes.extend_from_slice(&last[..last.len() - 100]);
    let o = audit(&dir, &policy, &bytes, true);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let v = json_lines(&o);
    assert_eq!(v[0]["kind"], "unreadable", "{v:?}");
    assert_eq!(v[0]["reason"], "capture_file", "{v:?}");
    assert_eq!(v.last().unwrap()["packets"], clean.len());

    // A leak and an unreadable packet: the leak decides (exit 1).
    let mut bytes = pcap(1, std::slice::from_ref(&rdp), 65535);
    record(&mut bytes, 1, &rdp, 14 + 16);
    let o = audit(&dir, &policy, &bytes, true);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_lines(&o).last().unwrap()["verdict"], "fail");
}

// --- item 6: IKE and NAT-T between the peers only; unknown and unencrypted ESP -------

/// A head office (192.0.2.1) and a branch (198.51.100.2) whose networks are protected
/// whole, any protocol; the SA file has a NULL and a GMAC SA as well.
const LAN_POLICY: &str = r#"
[[policy]]
name = "ike"
direction = "both"
local = "192.0.2.1"
remote = "198.51.100.2"
protocol = "udp"
local_port = 500
action = "bypass"

[[policy]]
name = "ike-nat-t"
direction = "both"
local = "192.0.2.1"
remote = "198.51.100.2"
protocol = "udp"
local_port = 4500
action = "bypass"

[[policy]]
name = "transport-ike"
direction = "both"
local = "192.0.2.10"
remote = "192.0.2.20"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"

[[policy]]
name = "lan"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["ho-to-b1", "b1-to-ho"]

[[policy]]
name = "rest"
direction = "both"
action = "discard"

[[sa]]
name = "ho-to-b1"
spi = 0x1001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "b1-to-ho"
spi = 0x2001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"

[[sa]]
name = "null-in"
spi = 0x3001
direction = "inbound"
mode = "tunnel"
cipher = "null"
integrity = "hmac-sha256-128"
integrity_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

[[sa]]
name = "gmac-in"
spi = 0x3002
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gmac"
key = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3"
"#;

fn lan_policy(dir: &TempDir) -> PathBuf {
    let p = dir.path("lan.toml");
    std::fs::write(&p, LAN_POLICY).unwrap();
    p
}

#[test]
fn audit_counts_ike_and_nat_t_only_between_the_peers() {
    let dir = TempDir::new("hard-ike");
    let policy = lan_policy(&dir);
    let pc = [10, 1, 0, 5];
    let dns = [10, 0, 0, 53];
    let pkts = vec![
        // IKE and ESP in UDP between the tunnel endpoints of "ho-to-b1".
        ipv4(HO, B1, 17, &udp(500, 500, &[0x11; 40])),
        ipv4(B1, HO, 17, &udp(4500, 4500, &esp(0x2001, 1))),
        ipv4(B1, HO, 17, &udp(4500, 4500, &[0, 0, 0, 0, 0x22, 0x22])),
        // IKE between two hosts named by an IKE bypass policy (transport mode).
        ipv4(
            [192, 0, 2, 10],
            [192, 0, 2, 20],
            17,
            &udp(500, 500, &[0x33; 40]),
        ),
        // Cleartext DNS from port 500 into the protected network: a leak, not IKE.
        ipv4(pc, dns, 17, &udp(500, 53, b"\x12\x34 query secret.example")),
        // And "ESP in UDP" on port 4500 between two inside hosts: a leak too.
        ipv4(pc, dns, 17, &udp(4500, 4500, &esp(0x2001, 2))),
        // UDP 500 from elsewhere: no policy lets it through.
        ipv4([203, 0, 113, 99], HO, 17, &udp(500, 500, &[0x44; 40])),
    ];
    let o = audit(&dir, &policy, &pcap(101, &pkts, 65535), true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_lines(&o);
    let leaks: Vec<&Value> = v.iter().filter(|x| x["kind"] == "leak").collect();
    assert_eq!(leaks.len(), 2, "{v:?}");
    assert_eq!(leaks[0]["packet"], 5);
    assert_eq!(leaks[0]["src_port"], 500);
    assert_eq!(leaks[0]["policy"], "lan");
    assert_eq!(leaks[1]["packet"], 6);
    assert_eq!(leaks[1]["dst_port"], 4500);
    let na: Vec<&Value> = v.iter().filter(|x| x["kind"] == "not-allowed").collect();
    assert_eq!(na.len(), 1, "{v:?}");
    assert_eq!(na[0]["packet"], 7);
    let sum = v.last().unwrap();
    assert_eq!(sum["ike"], 3, "{sum}");
    assert_eq!(sum["esp_in_udp"][0]["spi"], "0x00002001", "{sum}");
    assert_eq!(sum["esp_in_udp"][0]["packets"], 1, "{sum}");
    assert_eq!(sum["leaks"], 2, "{sum}");
}

#[test]
fn audit_fails_on_unknown_spi_and_unencrypted_esp() {
    let dir = TempDir::new("hard-spi");
    let policy = lan_policy(&dir);
    let good = vec![
        ipv4(HO, B1, 50, &esp(0x1001, 1)),
        ipv4(B1, HO, 50, &esp(0x2001, 1)),
    ];
    let mut pkts = good.clone();
    pkts.extend([
        ipv4(B1, HO, 50, &esp(0xdead, 1)),
        ipv4(B1, HO, 50, &esp(0xdead, 2)),
        ipv4(B1, HO, 50, &esp(0x3001, 1)),
        ipv4(B1, HO, 17, &udp(4500, 4500, &esp(0x3002, 1))),
    ]);
    let o = audit(&dir, &policy, &pcap(101, &pkts, 65535), true);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("SPI no SA in the policy file has") && err.contains("does not encrypt"),
        "{err}"
    );
    let v = json_lines(&o);
    let unknown: Vec<&Value> = v.iter().filter(|x| x["kind"] == "unknown-spi").collect();
    assert_eq!(unknown.len(), 1, "one finding per SPI: {v:?}");
    assert_eq!(unknown[0]["spi"], "0x0000dead");
    assert_eq!(unknown[0]["packet"], 3);
    assert_eq!(unknown[0]["transport"], "esp");
    let weak: Vec<&Value> = v
        .iter()
        .filter(|x| x["kind"] == "unencrypted-esp")
        .collect();
    assert_eq!(weak.len(), 2, "{v:?}");
    assert_eq!(weak[0]["sa"], "null-in");
    assert_eq!(weak[0]["cipher"], "null");
    assert_eq!(weak[1]["sa"], "gmac-in");
    assert_eq!(weak[1]["transport"], "esp-in-udp");
    let sum = v.last().unwrap();
    assert_eq!(sum["verdict"], "fail");
    assert_eq!(sum["unknown_spi"], 2, "{sum}");
    assert_eq!(sum["unencrypted_esp"], 2, "{sum}");
    let o = audit(&dir, &policy, &pcap(101, &pkts, 65535), false);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("UNKNOWN SPI") && text.contains("UNENCRYPTED"),
        "{text}"
    );
    assert!(text.contains("NOT ENCRYPTED"), "{text}");
    assert!(!text.contains("no plaintext leak"), "{text}");

    // The ESP of the file's encrypting SAs alone passes.
    let o = audit(&dir, &policy, &pcap(101, &good, 65535), true);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sum = json_lines(&o).pop().unwrap();
    assert_eq!(sum["verdict"], "pass");
    assert_eq!(sum["esp"][0]["encrypted"], true, "{sum}");
}

// --- item 11: the reader goes away ----------------------------------------------------

/// Runs `ipsec ARGS` with standard output a pipe, reads one line, closes the pipe, and
/// waits for the end: the first line and the result.
fn first_line_then_hang_up(args: &[&str]) -> (String, Output) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ipsec");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // The reader is dropped here: the rest of the output has nowhere to go.
    let o = child.wait_with_output().unwrap();
    (first, o)
}

fn assert_quiet(what: &str, o: &Output) {
    let err = stderr(o);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("os error"),
        "{what}: {err}"
    );
}

/// The branch's outbound SA (what `pcap encrypt` uses) ...
const SA_OUT: &str = r#"
[[sa]]
name = "out"
spi = 0x1001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"
"#;

/// ... and the head office's end of it, in a file of its own (one key serves one SA in
/// a file: the loaders refuse a key two SAs share).
const SA_IN: &str = r#"
[[sa]]
name = "in"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "000102030405060708090a0b0c0d0e0f10111213"
"#;

/// Reads a capture written by the tool: its records.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).expect("read pcap");
    let u = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let mut at = 24;
    let mut out = Vec::new();
    while at < b.len() {
        let len = u(at + 8);
        out.push(b[at + 16..at + 16 + len].to_vec());
        at += 16 + len;
    }
    out
}

#[test]
fn pcap_commands_write_their_files_when_the_reader_goes_away() {
    let dir = TempDir::new("hard-epipe-pcap");
    let sa = dir.path("sa.toml");
    std::fs::write(&sa, SA_OUT).unwrap();
    let sa_in = dir.path("sa-in.toml");
    std::fs::write(&sa_in, SA_IN).unwrap();
    // 3,000 packets: their JSON lines are far more than a pipe holds.
    let plain: Vec<Vec<u8>> = (0..3000)
        .map(|i| ipv4(SERVER, BRANCH_PC, 6, &tcp(3389, 50000, &[i as u8; 64])))
        .collect();
    let (input, enc, dec) = (
        dir.path("in.pcap"),
        dir.path("enc.pcap"),
        dir.path("dec.pcap"),
    );
    std::fs::write(&input, pcap(101, &plain, 65535)).unwrap();
    let (first, o) = first_line_then_hang_up(&[
        "pcap",
        "encrypt",
        "--json",
        "--sa",
        s(&sa),
        s(&input),
        s(&enc),
    ]);
    assert!(first.contains("\"index\":0"), "{first}");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_quiet("encrypt", &o);
    assert_eq!(records(&enc).len(), 3000, "the whole capture is encrypted");

    let (first, o) = first_line_then_hang_up(&[
        "pcap",
        "decrypt",
        "--json",
        "--sa",
        s(&sa_in),
        s(&enc),
        s(&dec),
    ]);
    assert!(first.contains("\"ok\":true"), "{first}");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_quiet("decrypt", &o);
    assert_eq!(records(&dec), plain, "the whole capture is decrypted");

    // --strict keeps its verdict: a bad packet still fails the run.
    let mut bad = records(&enc);
    let n = bad[5].len();
    bad[5][n - 3] ^= 1;
    std::fs::write(&enc, pcap(101, &bad, 65535)).unwrap();
    let (_, o) = first_line_then_hang_up(&[
        "pcap",
        "decrypt",
        "--json",
        "--strict",
        "--sa",
        s(&sa_in),
        s(&enc),
        s(&dec),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_quiet("decrypt --strict", &o);
    assert_eq!(records(&dec).len(), 2999);

    // The audit reads on to its verdict: 3,000 leaks, exit 1.
    let (first, o) =
        first_line_then_hang_up(&["pcap", "audit", "--json", s(&example()), s(&input)]);
    assert!(first.contains("\"leak\""), "{first}");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_quiet("audit", &o);
    assert!(
        stderr(&o).contains("3000 cleartext packet(s)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn policy_commands_end_quietly_when_the_reader_goes_away() {
    let dir = TempDir::new("hard-epipe-policy");
    // 3,000 invalid policies: 3,000 lint findings.
    let mut bad = String::new();
    for i in 0..3000 {
        bad.push_str(&format!(
            "[[policy]]\nname = \"p{i}\"\ndirection = \"both\"\nlocal = \"10.0.{}.0/33\"\naction = \"bypass\"\n\n",
            i % 250
        ));
    }
    let big = dir.path("big.toml");
    std::fs::write(&big, bad).unwrap();
    for json in [false, true] {
        let mut args = vec!["policy", "lint", s(&big)];
        if json {
            args.push("--json");
        }
        let (first, o) = first_line_then_hang_up(&args);
        assert!(first.contains("invalid"), "{first}");
        assert_eq!(
            o.status.code(),
            Some(1),
            "lint keeps its verdict: {}",
            stderr(&o)
        );
        assert_quiet("lint", &o);
    }

    // 200 port-specific policies: thousands of boundary probes.
    let mut many = String::new();
    for i in 0..200 {
        many.push_str(&format!(
            "[[policy]]\nname = \"p{i}\"\ndirection = \"both\"\nlocal = \"10.0.{}.0/24\"\nremote = \"10.1.0.0/16\"\nprotocol = \"tcp\"\nlocal_port = {}\naction = \"bypass\"\n\n",
            i % 250,
            1000 + i
        ));
    }
    let many_path = dir.path("many.toml");
    std::fs::write(&many_path, many).unwrap();
    for json in [false, true] {
        let mut args = vec!["policy", "explain", s(&many_path)];
        if json {
            args.push("--json");
        }
        let (_, o) = first_line_then_hang_up(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_quiet("explain", &o);
    }

    // 3,000 cases, one failing: `policy test` keeps its verdict.
    let mut cases = String::new();
    for i in 0..3000 {
        cases.push_str(&format!(
            "[[case]]\nname = \"case {i}\"\ndirection = \"inbound\"\nsrc = \"10.1.0.{}\"\ndst = \"10.0.0.10\"\nprotocol = \"tcp\"\nsrc_port = {}\ndst_port = 3389\nexpect = \"{}\"\n\n",
            i % 250 + 1,
            40000 + i,
            if i == 2999 { "bypass" } else { "protect" }
        ));
    }
    let cases_path = dir.path("cases.toml");
    std::fs::write(&cases_path, cases).unwrap();
    for json in [false, true] {
        let ex = example();
        let mut args = vec!["policy", "test", s(&ex), s(&cases_path)];
        if json {
            args.push("--json");
        }
        let (first, o) = first_line_then_hang_up(&args);
        assert!(first.contains("case 0"), "{first}");
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert_quiet("test", &o);
        assert!(
            stderr(&o).contains("1 of 3000 case(s) failed"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn bench_and_demo_end_quietly_when_the_reader_goes_away() {
    let (first, o) = first_line_then_hang_up(&["bench", "--json", "--seconds", "0.002"]);
    assert!(first.contains("\"op\""), "{first}");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_quiet("bench", &o);
    let (first, o) = first_line_then_hang_up(&["demo"]);
    assert!(!first.is_empty());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_quiet("demo", &o);
}

// --- item 12: bounded memory, bounded messages -------------------------------------------

/// Runs `ipsec ARGS` under a 256 MiB address-space limit (`ulimit -v`), with `feed`
/// writing standard input from another thread.
fn limited(args: &[&str], feed: impl FnOnce(&mut dyn Write) + Send + 'static) -> Output {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 262144 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sh");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

#[test]
fn lookup_keeps_going_past_huge_lines_invalid_utf8_and_long_fields() {
    let good = "inbound,10.1.0.15,10.0.0.10,tcp,50000,3389\n";
    let o = limited(
        &["policy", "lookup", s(&example()), "--flows", "-"],
        move |w| {
            // 300 MB on one line, more than the process may allocate.
            let _ = w.write_all(good.as_bytes());
            let _ = w.write_all(b"inbound,");
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..300 {
                if w.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = w.write_all(b",10.0.0.10,tcp,1,2\n");
            let _ = w.write_all(b"inbound,10.1.0.\xff,10.0.0.10,tcp,1,2\n");
            let _ = w.write_all(good.as_bytes());
            let _ = w.write_all(format!("# {}\n", "long comment ".repeat(1000)).as_bytes());
            let _ =
                w.write_all(format!("inbound,{},10.0.0.10,tcp,1,2\n", "9".repeat(500)).as_bytes());
            let _ = w.write_all(good.as_bytes());
        },
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_lines(&o);
    assert_eq!(v.len(), 6, "{v:?}");
    for i in [0, 3, 5] {
        assert_eq!(v[i]["policy"], "b1-rdp", "{}", v[i]);
    }
    let e = |i: usize| {
        v[i]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}", v[i]))
            .to_owned()
    };
    assert!(
        e(1).starts_with("line 2: ") && e(1).contains("4096-byte limit"),
        "{}",
        e(1)
    );
    assert!(
        e(2).starts_with("line 3: ") && e(2).contains("not UTF-8"),
        "{}",
        e(2)
    );
    assert!(
        e(4).starts_with("line 6: ") && e(4).contains("64-byte limit"),
        "{}",
        e(4)
    );
    // Errors quote at most 64 characters of a value.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().all(|l| l.len() < 300), "{out}");
    assert!(stderr(&o).contains("3 of 6 flow line(s)"), "{}", stderr(&o));
}

#[test]
fn error_messages_quote_user_text_short() {
    let dir = TempDir::new("hard-echo");
    let long = "a".repeat(1 << 20);
    // A flow field (within the line and field limits), a policy value, a case value,
    // an SA name on the command line.
    let flows = dir.path("flows.csv");
    std::fs::write(
        &flows,
        format!("inbound,{},10.0.0.10,tcp,1,2\n", &long[..100]),
    )
    .unwrap();
    let policy = dir.path("p.toml");
    std::fs::write(
        &policy,
        format!("[[policy]]\nname = \"x\"\ndirection = \"both\"\nlocal = \"{long}\"\naction = \"bypass\"\n"),
    )
    .unwrap();
    let cases = dir.path("c.toml");
    std::fs::write(
        &cases,
        format!("[[case]]\ndirection = \"inbound\"\nsrc = \"{long}\"\ndst = \"10.0.0.1\"\nprotocol = \"tcp\"\nexpect = \"bypass\"\n"),
    )
    .unwrap();
    let sa = dir.path("sa.toml");
    std::fs::write(&sa, SA_OUT).unwrap();
    let cap = dir.path("c.pcap");
    std::fs::write(&cap, pcap(101, &[rdp_in_the_clear()], 65535)).unwrap();
    let name = "n".repeat(100_000);
    let ex = example();
    let runs: [(Vec<&str>, Option<i32>); 5] = [
        (vec!["policy", "lint", s(&policy)], Some(1)),
        (
            vec!["policy", "lookup", s(&policy), "--flows", s(&flows)],
            Some(2),
        ),
        (vec!["policy", "test", s(&ex), s(&cases)], Some(2)),
        (
            vec!["policy", "lookup", s(&ex), "--flows", s(&flows)],
            Some(1),
        ),
        (
            vec![
                "pcap",
                "encrypt",
                "--name",
                &name,
                "--sa",
                s(&sa),
                s(&cap),
                "/dev/null",
            ],
            Some(2),
        ),
    ];
    for (args, code) in runs {
        let o = ipsec(&args);
        assert_eq!(o.status.code(), code, "{args:?}: {}", stderr(&o));
        for line in String::from_utf8_lossy(&o.stdout)
            .lines()
            .chain(stderr(&o).lines())
        {
            let start: String = line.chars().take(200).collect();
            assert!(line.chars().count() < 400, "{}: {start}", &args[1]);
        }
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
        assert!(all.contains('…'), "{args:?}: {all}");
    }
}

#[test]
fn policy_test_reports_every_bad_case() {
    let dir = TempDir::new("hard-cases");
    let cases = dir.path("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
direction = "inbound"
src = "10.1.0.300"
dst = "10.0.0.10"
protocol = "tcp"
expect = "protect"

[[case]]
name = "fine"
direction = "inbound"
src = "10.1.0.3"
dst = "10.0.0.10"
protocol = "tcp"
dst_port = 3389
expect = "protect"

[[case]]
name = "sideways"
direction = "sideways"
src = "10.1.0.3"
dst = "10.0.0.10"
protocol = "tcp"
expect = "protect"

[[case]]
name = "typo"
direction = "inbound"
src = "10.1.0.3"
dst = "10.0.0.10"
protocol = "tcp"
expcet = "protect"
"#,
    )
    .unwrap();
    let o = ipsec(&["policy", "test", s(&example()), s(&cases)]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for want in [
        "case #1",
        "src",
        "case \"sideways\"",
        "direction",
        "case \"typo\"",
        "expcet",
    ] {
        assert!(err.contains(want), "{want:?} missing in {err}");
    }
    assert!(!err.contains("\"fine\""), "{err}");
    // A cases file that is not UTF-8: the line is named.
    std::fs::write(&cases, b"[[case]]\nname = \"\xff\"\n").unwrap();
    let o = ipsec(&["policy", "test", s(&example()), s(&cases)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("line 2: not UTF-8"), "{}", stderr(&o));
}

/// 300 MB of capture through a pipe into a process allowed 256 MiB of address space:
/// the pcap commands read one record at a time.
#[test]
fn pcap_commands_stream_captures_larger_than_their_memory() {
    // 300 records of 1 MiB each: cleartext RDP padded to 1 MiB (IP length 65,535).
    let mut rec = ipv4(BRANCH_PC, SERVER, 6, &tcp(50000, 3389, &[0x61; 65535 - 40]));
    rec.resize(1 << 20, 0);
    let rec = std::sync::Arc::new(rec);
    let feed = |rec: std::sync::Arc<Vec<u8>>, n: usize| {
        move |w: &mut dyn Write| {
            let mut one = Vec::new();
            let _ = w.write_all(&pcap_header(101, 1 << 20));
            for i in 0..n {
                one.clear();
                record(&mut one, i, &rec, usize::MAX);
                if w.write_all(&one).is_err() {
                    return;
                }
            }
        }
    };
    let o = limited(
        &["pcap", "audit", "--json", s(&example()), "/dev/stdin"],
        feed(rec.clone(), 300),
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json_lines(&o);
    let sum = v.last().unwrap();
    assert_eq!(sum["packets"], 300, "{sum}");
    assert_eq!(sum["leaks"], 300, "{sum}");

    // Encrypt: 5,000 packets of 64 KB (320 MB) in, and as much out.
    let dir = TempDir::new("hard-stream");
    let sa = dir.path("sa.toml");
    std::fs::write(&sa, SA_OUT).unwrap();
    let big = std::sync::Arc::new(ipv4(SERVER, BRANCH_PC, 6, &tcp(3389, 1, &[0x62; 64000])));
    let o = limited(
        &["pcap", "encrypt", "--sa", s(&sa), "/dev/stdin", "/dev/null"],
        feed(big, 5000),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("5000 packets in, 5000 encrypted out"), "{out}");
}

/// A capture that breaks off half-way: exit 2 and no output file, as before streaming
/// (the output is written aside and renamed into place at the end).
#[test]
fn pcap_encrypt_leaves_no_half_written_output() {
    let dir = TempDir::new("hard-partial");
    let sa = dir.path("sa.toml");
    std::fs::write(&sa, SA_OUT).unwrap();
    let frames: Vec<Vec<u8>> = (0..50).map(|_| rdp_in_the_clear()).collect();
    let mut bytes = pcap(101, &frames, 65535);
    bytes.truncate(bytes.len() - 10);
    let (input, out) = (dir.path("in.pcap"), dir.path("out.pcap"));
    std::fs::write(&input, bytes).unwrap();
    std::fs::write(&out, b"an older file").unwrap();
    let o = ipsec(&["pcap", "encrypt", "--sa", s(&sa), s(&input), s(&out)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("packet 49"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"an older file");
    let left: Vec<_> = std::fs::read_dir(dir.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.contains("partial")), "{left:?}");
}
