//! End-to-end tests of `ipsec policy lookup`, `ipsec pcap audit` and the policy-driven
//! `ipsec demo`, on `examples/branch-office.toml`.

use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{BIN, TempDir, checksum, esp, ether, ipsec, ipv4, tcp, udp};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/branch-office.toml")
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn lookup(dir: &TempDir, csv: &str, extra: &[&str]) -> Output {
    let flows = dir.path("flows.csv");
    std::fs::write(&flows, csv).unwrap();
    let policy = example();
    let mut args = vec![
        "policy",
        "lookup",
        policy.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ipsec(&args)
}

const FLOWS: &str = "\
direction,src,dst,protocol,src_port,dst_port
# branch 1 reaches the terminal server
inbound,10.1.0.15,10.0.0.10,tcp,50000,3389

outbound,10.0.0.10,10.1.0.15,tcp,3389,50000
inbound,10.2.0.17,10.0.0.30,6,50001,9100
inbound,10.1.0.15,10.0.0.10,tcp,50000,23
outbound,192.0.2.1,198.51.100.2,udp,500,500
inbound,203.0.113.2,192.0.2.1,UDP,4500,4500
inbound,10.1.0.15,10.0.0.53,udp,53000,53
outbound,10.0.0.1,10.1.0.1,icmp,8,0
";

#[test]
fn lookup_answers_in_order_with_the_right_sa() {
    let dir = TempDir::new("lookup");
    for extra in [&[][..], &["--cache"][..]] {
        let o = lookup(&dir, FLOWS, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v = json_lines(&o);
        let want: [(&str, Option<&str>, Option<&str>); 8] = [
            ("protect", Some("b1-rdp"), Some("b1-to-ho")),
            ("protect", Some("b1-rdp"), Some("ho-to-b1")),
            ("protect", Some("b2-print-raw"), Some("b2-to-ho")),
            ("discard", Some("deny-everything-else"), None),
            ("bypass", Some("ike"), None),
            ("bypass", Some("ike-nat-t"), None),
            ("discard", Some("deny-everything-else"), None),
            ("discard", Some("deny-everything-else"), None),
        ];
        assert_eq!(v.len(), want.len(), "{v:?}");
        for (got, (action, policy, sa)) in v.iter().zip(want) {
            assert_eq!(got["action"], action, "{got}");
            assert_eq!(got["policy"].as_str(), policy, "{got}");
            assert_eq!(got["sa"].as_str(), sa, "{got}");
        }
    }
}

#[test]
fn lookup_reports_bad_lines_in_place_and_exits_1() {
    let dir = TempDir::new("badcsv");
    let csv = "\
inbound,10.1.0.15,10.0.0.10,tcp,50000,3389
sideways,10.1.0.15,10.0.0.10,tcp,50000,3389
inbound,10.1.0.300,10.0.0.10,tcp,50000,3389
inbound,10.1.0.15,10.0.0.10,tcp,50000
inbound,10.1.0.15,10.0.0.10,tcp,99999,3389
inbound,10.1.0.15,10.0.0.10,bogus,1,2
inbound,10.1.0.15,10.0.0.10,esp,1,2
inbound,10.1.0.15,::1,tcp,1,2

inbound,10.1.0.15,10.0.0.20,tcp,50000,443
";
    let o = lookup(&dir, csv, &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json_lines(&o);
    assert_eq!(v.len(), 9, "{v:?}");
    assert_eq!(v[0]["action"], "protect");
    for (k, line) in (1..8).zip(2..) {
        let e = v[k]["error"].as_str().unwrap_or_else(|| panic!("{}", v[k]));
        assert!(e.starts_with(&format!("line {line}: ")), "{e}");
    }
    assert_eq!(v[8]["policy"], "b1-outlook-https");
    assert!(String::from_utf8_lossy(&o.stderr).contains("7 of 9"));
}

#[test]
fn lookup_bad_policy_file_exits_2() {
    let dir = TempDir::new("badpolicy");
    let policy = dir.path("p.toml");
    std::fs::write(
        &policy,
        "[[policy]]\nname = \"x\"\nlocal = \"10.0.0.0/33\"\n",
    )
    .unwrap();
    let flows = dir.path("f.csv");
    std::fs::write(&flows, "").unwrap();
    let o = ipsec(&[
        "policy",
        "lookup",
        policy.to_str().unwrap(),
        "--flows",
        flows.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("local"));
}

#[test]
fn lookup_100k_flows() {
    let mut csv = String::with_capacity(100_000 * 48);
    csv.push_str("direction,src,dst,protocol,src_port,dst_port\n");
    let ports = [3389u16, 443, 135, 445, 631, 9100, 23, 80];
    for i in 0..100_000u32 {
        let branch = 1 + i % 3; // 10.3.0.0/24 is unknown
        let port = ports[(i as usize / 3) % ports.len()];
        // The server each service runs on (examples/branch-office.toml).
        let server = match port {
            443 | 135 => 20,
            445 | 631 => 30,
            9100 => 30 + i % 20,
            _ => 10,
        };
        csv.push_str(&format!(
            "inbound,10.{branch}.{}.{},10.0.0.{server},tcp,{},{port}\n",
            0,
            i % 250 + 1,
            1024 + i % 60000
        ));
    }
    let policy = example();
    for extra in [&[][..], &["--cache"][..]] {
        let mut args = vec!["policy", "lookup", policy.to_str().unwrap(), "--flows", "-"];
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = csv.clone();
        let writer = std::thread::spawn(move || stdin.write_all(data.as_bytes()));
        let o = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100_000);
        // Spot checks: line 0 is branch 1 RDP; line 2 is from the unknown 10.3.0.0/24.
        assert!(lines[0].contains("\"b1-rdp\""), "{}", lines[0]);
        assert!(lines[2].contains("\"discard\""), "{}", lines[2]);
        let protect = lines.iter().filter(|l| l.contains("protect")).count();
        // 2 of 3 from a branch, 6 of 8 ports allowed.
        assert!((45_000..55_000).contains(&protect), "{protect}");
    }
}

// --- pcap audit -----------------------------------------------------------------------

fn pcap(linktype: u32, packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, linktype] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, p) in packets.iter().enumerate() {
        for v in [1_700_000_000 + i as u32, 0, p.len() as u32, p.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

const HO: [u8; 4] = [192, 0, 2, 1];
const B1: [u8; 4] = [198, 51, 100, 2];
const B2: [u8; 4] = [203, 0, 113, 2];

fn tunnel_traffic() -> Vec<Vec<u8>> {
    let mut v = vec![
        ipv4(HO, B1, 17, &udp(500, 500, &[0x11; 40])),
        ipv4(B1, HO, 17, &udp(500, 500, &[0x22; 40])),
    ];
    for seq in 1..=5 {
        v.push(ipv4(B1, HO, 50, &esp(0x2001, seq)));
        v.push(ipv4(HO, B1, 50, &esp(0x1001, seq)));
    }
    v.push(ipv4(B2, HO, 17, &udp(4500, 4500, &esp(0x2002, 1))));
    v.push(ipv4(
        B2,
        HO,
        17,
        &udp(4500, 4500, &[0, 0, 0, 0, 1, 2, 3, 4]),
    ));
    v
}

fn audit(dir: &TempDir, name: &str, linktype: u32, packets: &[Vec<u8>], json: bool) -> Output {
    let cap = dir.path(name);
    std::fs::write(&cap, pcap(linktype, packets)).unwrap();
    let policy = example();
    let mut args = vec![
        "pcap",
        "audit",
        policy.to_str().unwrap(),
        cap.to_str().unwrap(),
    ];
    if json {
        args.push("--json");
    }
    ipsec(&args)
}

#[test]
fn audit_all_esp_capture_is_clean() {
    let dir = TempDir::new("audit-clean");
    let pkts = tunnel_traffic();
    let o = audit(&dir, "clean.pcap", 101, &pkts, false);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("0x00002001"), "{stdout}");
    assert!(stdout.contains("SA b1-to-ho"), "{stdout}");
    assert!(stdout.contains("no plaintext leak"), "{stdout}");

    let o = audit(&dir, "clean.pcap", 101, &pkts, true);
    assert_eq!(o.status.code(), Some(0));
    let v = json_lines(&o);
    assert_eq!(v.len(), 1, "{v:?}");
    let s = &v[0];
    assert_eq!(s["kind"], "summary");
    assert_eq!(s["packets"], 14);
    assert_eq!(s["ike"], 3);
    assert_eq!(s["leaks"], 0);
    let esp = s["esp"].as_array().unwrap();
    assert_eq!(esp.len(), 2);
    assert_eq!(esp[0]["spi"], "0x00001001");
    assert_eq!(esp[0]["sa"], "ho-to-b1");
    assert_eq!(esp[0]["packets"], 5);
    assert_eq!(s["esp_in_udp"][0]["spi"], "0x00002002");
    assert_eq!(s["esp_in_udp"][0]["packets"], 1);
}

#[test]
fn audit_finds_a_leak_and_exits_1() {
    let dir = TempDir::new("audit-leak");
    let mut pkts = tunnel_traffic();
    // Terminal services from branch 1 in the clear (a leak), and its reply (a leak too:
    // the lookup is made in both directions), a telnet attempt (no policy allows it).
    pkts.push(ipv4(
        [10, 1, 0, 15],
        [10, 0, 0, 10],
        6,
        &tcp(50000, 3389, b"password"),
    ));
    pkts.push(ipv4(
        [10, 0, 0, 10],
        [10, 1, 0, 15],
        6,
        &tcp(3389, 50000, b"desktop"),
    ));
    pkts.push(ipv4(
        [10, 2, 0, 15],
        [10, 0, 0, 10],
        6,
        &tcp(50000, 23, b"telnet"),
    ));
    for (linktype, frames) in [
        (101u32, pkts.clone()),
        (1, pkts.iter().map(|p| ether(p)).collect()),
    ] {
        let o = audit(&dir, "leak.pcap", linktype, &frames, false);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("LEAK"), "{stdout}");
        assert!(stdout.contains("b1-rdp"), "{stdout}");
        assert!(stdout.contains("NOT ALLOWED"), "{stdout}");

        let o = audit(&dir, "leak.pcap", linktype, &frames, true);
        assert_eq!(o.status.code(), Some(1));
        let v = json_lines(&o);
        let leaks: Vec<&Value> = v.iter().filter(|x| x["kind"] == "leak").collect();
        assert_eq!(leaks.len(), 2, "{v:?}");
        assert_eq!(leaks[0]["packet"], 15);
        assert_eq!(leaks[0]["policy"], "b1-rdp");
        assert_eq!(leaks[0]["direction"], "inbound");
        assert_eq!(leaks[0]["sa"], "b1-to-ho");
        assert_eq!(leaks[1]["direction"], "outbound");
        assert_eq!(leaks[1]["sa"], "ho-to-b1");
        let na: Vec<&Value> = v.iter().filter(|x| x["kind"] == "not-allowed").collect();
        assert_eq!(na.len(), 1);
        assert_eq!(na[0]["dst_port"], 23);
        let s = v.last().unwrap();
        assert_eq!(
            (s["leaks"].as_u64(), s["not_allowed"].as_u64()),
            (Some(2), Some(1))
        );
    }
}

#[test]
fn audit_usage_errors_exit_2() {
    let dir = TempDir::new("audit-usage");
    let bad = dir.path("bad.pcap");
    std::fs::write(&bad, b"not a pcap file at all, really").unwrap();
    let policy = example();
    let o = ipsec(&[
        "pcap",
        "audit",
        policy.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = ipsec(&["pcap", "audit", "/nonexistent.toml", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

// --- demo -----------------------------------------------------------------------------

#[test]
fn demo_is_policy_driven_and_exits_0() {
    // From a directory without examples/: the built-in copy of the policy.
    let o = Command::new(BIN)
        .arg("demo")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "built-in examples/branch-office.toml",
        "Lint",
        "0 error(s)",
        "Firewall openings",
        "IP protocol 50",
        "b1-rdp",
        "b2-print-raw",
        "deny-everything-else",
        "b1-to-ho",
        "ho-to-b2",
        "branch2",
        "SA monitor",
        "replay=1",
        "auth_failed=1",
        "All expectations held",
    ] {
        assert!(stdout.contains(want), "{want:?} missing:\n{stdout}");
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
    // Each branch's allowed flows are PROTECTed, the refused ones DISCARDed.
    let rows = |from: &str, action: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with(from) && l.contains(action))
            .count()
    };
    assert_eq!(rows("branch1", "PROTECT"), 6);
    assert_eq!(rows("branch2", "PROTECT"), 6);
    assert_eq!(rows("branch1", "DISCARD"), 3); // telnet, unknown subnet, SMB to a non-print host
    assert_eq!(rows("branch2", "DISCARD"), 2);

    // With --policy FILE.
    let policy = example();
    let o = ipsec(&["demo", "--policy", policy.to_str().unwrap()]);
    assert!(o.status.success());
    let o = ipsec(&["demo", "--policy", "/nonexistent.toml"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The rekey scene of `ipsec demo`: a soft lifetime fires under traffic, the new SA pair
/// is installed make-before-break, late packets of the old SAs are still accepted, the old
/// SAs are deleted, and the monitor accounts for every packet across old and new SAs.
#[test]
fn demo_rekeys_under_traffic_without_losing_a_packet() {
    let o = ipsec(&["demo"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let scene = stdout
        .split_once("Rekeying under traffic")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no rekey scene:\n{stdout}"));
    assert!(!scene.contains("FAILED"), "{scene}");
    for want in [
        // The soft lifetime (8 packets, jitter 0) fires at the same packet every run.
        "poll_event -> Rekey (soft packet limit) for SA \"ho-to-b1\" after 8 packets sent",
        // Make-before-break: the receivers' inbound SAs first, then the senders'.
        "rekey 1/4   branch1: rekey_sa(\"ho-to-b1\" -> \"ho-to-b1-2\", inbound",
        "rekey 2/4   head office: rekey_sa(\"b1-to-ho\" -> \"b1-to-ho-2\", inbound",
        "rekey 3/4   head office: rekey_sa(\"ho-to-b1\" -> \"ho-to-b1-2\", outbound",
        "rekey 4/4   branch1: rekey_sa(\"b1-to-ho\" -> \"b1-to-ho-2\", outbound",
        "arrive: accepted by the old inbound SAs",
        "drops: 0 on the SAs, 0 on the gateways",
    ] {
        assert!(scene.contains(want), "{want:?} missing:\n{scene}");
    }
    assert!(stdout.ends_with("All expectations held.\n"), "{stdout}");

    // The monitor after the rekey: GATEWAY SA SPI DIR STATE PACKETS BYTES DROPS.
    let monitor = scene
        .split_once("SA monitor after the rekey")
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no monitor:\n{scene}"));
    let rows: Vec<Vec<&str>> = monitor
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() == 8 && (w[0] == "head-office" || w[0] == "branch1"))
        .collect();
    assert_eq!(
        rows.len(),
        8,
        "old and new SA of each direction, both gateways:\n{monitor}"
    );
    let row = |gw: &str, sa: &str| -> (String, String, u64, u64, String) {
        let w = rows
            .iter()
            .find(|w| w[0] == gw && w[1] == sa)
            .unwrap_or_else(|| panic!("no row for {gw} {sa}:\n{monitor}"));
        (
            w[3].to_owned(),
            w[4].to_owned(),
            w[5].parse().expect("packets"),
            w[6].parse().expect("bytes"),
            w[7].to_owned(),
        )
    };
    for w in &rows {
        assert_eq!(w[7], "none", "a drop:\n{monitor}");
    }
    // (old, new, sender, receiver) for each direction.
    for (old, new, sender, receiver) in [
        ("ho-to-b1", "ho-to-b1-2", "head-office", "branch1"),
        ("b1-to-ho", "b1-to-ho-2", "branch1", "head-office"),
    ] {
        let (s_old, s_new) = (row(sender, old), row(sender, new));
        let (r_old, r_new) = (row(receiver, old), row(receiver, new));
        assert_eq!(
            (s_old.0.as_str(), r_old.0.as_str()),
            ("outbound", "inbound")
        );
        assert_eq!(
            (s_new.0.as_str(), r_new.0.as_str()),
            ("outbound", "inbound")
        );
        // The old SAs are gone, the new ones carry the traffic.
        assert_eq!((s_old.1.as_str(), r_old.1.as_str()), ("deleted", "deleted"));
        assert_eq!((s_new.1.as_str(), r_new.1.as_str()), ("active", "active"));
        assert!(
            s_new.2 > 0 && r_new.2 > 0,
            "the new SA carried nothing:\n{monitor}"
        );
        // Every packet sent under each SA arrived under it: the late ones included.
        assert_eq!((s_old.2, s_old.3), (r_old.2, r_old.3), "{old}:\n{monitor}");
        assert_eq!((s_new.2, s_new.3), (r_new.2, r_new.3), "{new}:\n{monitor}");
        // 8 packets before the event and 2 late ones went out under the old SA.
        assert_eq!(s_old.2, 10, "{monitor}");
        let total = s_old.2 + s_new.2;
        assert!(
            monitor.contains(&format!(
                "sent {} ({old}) + {} ({new}) = {total}, received {} + {} = {total}: every packet accounted for, 0 lost",
                s_old.2, s_new.2, r_old.2, r_new.2
            )),
            "{monitor}"
        );
    }
}

// --- lint, firewall, test, explain --------------------------------------------------

#[test]
fn lint_firewall_test_explain_on_the_example() {
    let policy = example();
    let p = policy.to_str().unwrap();
    let o = ipsec(&["policy", "lint", p, "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(json_lines(&o).iter().all(|f| f["severity"] != "error"));

    let o = ipsec(&["policy", "firewall", p, "--json"]);
    assert!(o.status.success());
    let v = json_lines(&o);
    let has = |from: &str, to: &str, proto: u64, port: Option<u64>| {
        v.iter().any(|x| {
            x["from"] == from
                && x["to"] == to
                && x["protocol"] == proto
                && x["port"].as_u64() == port
        })
    };
    assert!(has("198.51.100.2", "192.0.2.1", 50, None), "{v:?}");
    assert!(has("192.0.2.1", "203.0.113.2", 17, Some(500)), "{v:?}");
    assert!(!v.iter().any(|x| x["protocol"] == 51), "no AH: {v:?}");

    let dir = TempDir::new("cases");
    let cases = dir.path("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "b2 prints"
direction = "inbound"
src = "10.2.0.9"
dst = "10.0.0.30"
protocol = "tcp"
src_port = 40000
dst_port = 631
expect = "protect"
policy = "b2-print-ipp"

[[case]]
name = "telnet is refused"
direction = "inbound"
src = "10.2.0.9"
dst = "10.0.0.10"
protocol = "tcp"
src_port = 40000
dst_port = 23
expect = "discard"
"#,
    )
    .unwrap();
    let o = ipsec(&["policy", "test", p, cases.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("2 passed, 0 failed"), "{stdout}");
    let text = std::fs::read_to_string(&cases)
        .unwrap()
        .replace("expect = \"discard\"", "expect = \"bypass\"");
    std::fs::write(&cases, text).unwrap();
    let o = ipsec(&["policy", "test", p, cases.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_lines(&o);
    assert_eq!(v[1]["passed"], false);
    assert_eq!(v[1]["policy"], "deny-everything-else");
    std::fs::write(&cases, "[[case]]\nbogus = 1\n").unwrap();
    let o = ipsec(&["policy", "test", p, cases.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    let o = ipsec(&["policy", "explain", p, "--json"]);
    assert!(o.status.success());
    let v = json_lines(&o);
    assert!(
        v.iter()
            .any(|x| x["policy"] == "b1-rdp" && x["inside"] == true && x["hit"] == "b1-rdp"),
        "{v:?}"
    );
}

#[test]
fn lint_reports_every_problem_and_exits_1() {
    let dir = TempDir::new("lint");
    let policy = dir.path("bad.toml");
    std::fs::write(
        &policy,
        r#"
[[policy]]
name = "a"
local = "10.0.0.0/33"
action = "bypass"

[[policy]]
name = "b"
protocol = "tcp"
local_port = "9-1"
action = "discard"
"#,
    )
    .unwrap();
    let o = ipsec(&["policy", "lint", policy.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v = json_lines(&o);
    let invalid: Vec<&Value> = v.iter().filter(|x| x["code"] == "invalid").collect();
    assert!(invalid.len() >= 2, "{v:?}");
    assert!(invalid.iter().any(|x| x["policy"] == "a"), "{v:?}");
    assert!(invalid.iter().any(|x| x["policy"] == "b"), "{v:?}");
    let o = ipsec(&["policy", "lint", policy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("invalid"));
}

/// `ipsec policy lookup ... | head -1`: when the reader goes away the command stops
/// quietly with success, as Unix tools do, instead of reporting a broken pipe.
#[test]
fn lookup_stops_quietly_when_the_reader_goes_away() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("epipe");
    let flows = dir.path("flows.csv");
    let line = "inbound,10.1.0.15,10.0.0.10,tcp,50000,3389\n";
    std::fs::write(&flows, line.repeat(200_000)).unwrap();
    let policy = example();
    let mut child = Command::new(BIN)
        .args(["policy", "lookup", policy.to_str().unwrap(), "--flows"])
        .arg(&flows)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"b1-rdp\""), "{first}");
    // The reader is dropped here: the rest of the output has nowhere to go.
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// --- fragments (RFC 4301 §7) --------------------------------------------------------

#[test]
fn lookup_answers_port_less_flows_as_non_first_fragments() {
    let dir = TempDir::new("lookup-frag");
    let csv = "\
inbound,10.1.0.15,10.0.0.10,tcp,,
inbound,10.3.0.1,10.0.0.10,tcp,,
outbound,192.0.2.1,198.51.100.2,udp,,
outbound,10.0.0.10,10.1.0.15,icmp,,
inbound,10.1.0.15,10.0.0.10,tcp,,3389
";
    for extra in [&[][..], &["--cache"][..]] {
        let o = lookup(&dir, csv, extra);
        assert_eq!(o.status.code(), Some(1), "the half-empty line is an error");
        let v = json_lines(&o);
        assert_eq!(v.len(), 5, "{v:?}");
        // A later fragment between a branch and the terminal server: "b1-rdp" may
        // cover it (port 3389), so it cannot be decided without its first fragment.
        assert_eq!(v[0]["action"], "discard", "{}", v[0]);
        assert_eq!(v[0]["drop"], "fragment_unresolved", "{}", v[0]);
        assert_eq!(v[0]["could_match"], "b1-rdp", "{}", v[0]);
        assert!(v[0]["policy"].is_null());
        // From an unknown network only the catch-all could take it: decided.
        assert_eq!(v[1]["policy"], "deny-everything-else", "{}", v[1]);
        assert!(v[1].get("drop").is_none(), "{}", v[1]);
        // IKE's later fragments: "ike" is port-specific too.
        assert_eq!(v[2]["could_match"], "ike", "{}", v[2]);
        // ICMP between the networks: nothing looks at ICMP fields; the catch-all.
        assert_eq!(v[3]["policy"], "deny-everything-else", "{}", v[3]);
        let e = v[4]["error"].as_str().unwrap();
        assert!(e.contains("both ports or neither"), "{e}");
    }
}

const FRAGMENT_POLICY: &str = r#"
[[policy]]
name = "rdp"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/16"
protocol = "tcp"
local_port = 3389
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "rest"
direction = "both"
action = "bypass"

[[sa]]
name = "out"
spi = 0x1001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "in"
spi = 0x2001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"
"#;

#[test]
fn lint_warns_when_later_fragments_of_a_port_specific_protect_reach_a_bypass() {
    let dir = TempDir::new("lint-frag");
    let policy = dir.path("p.toml");
    std::fs::write(&policy, FRAGMENT_POLICY).unwrap();
    let o = ipsec(&["policy", "lint", policy.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "a warning, not an error");
    let v = json_lines(&o);
    let frag: Vec<&Value> = v
        .iter()
        .filter(|x| x["code"] == "fragment-bypass")
        .collect();
    assert_eq!(frag.len(), 1, "{v:?}");
    assert_eq!(frag[0]["policy"], "rest");
    assert_eq!(frag[0]["severity"], "warning");
    let m = frag[0]["message"].as_str().unwrap();
    assert!(
        m.contains("\"rdp\"") && m.contains("non-first fragments"),
        "{m}"
    );
    let o = ipsec(&["policy", "lint", policy.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("warning[fragment-bypass] policy \"rest\""),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // The example stays clean (README: `ipsec policy lint examples/branch-office.toml`).
    let example = example();
    let o = ipsec(&["policy", "lint", example.to_str().unwrap(), "--json"]);
    assert!(
        json_lines(&o)
            .iter()
            .all(|x| x["code"] != "fragment-bypass"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// An IPv4 fragment: `data` at byte `offset` of datagram `id`.
fn ipv4_frag(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    let mut p = ipv4(src, dst, proto, data);
    p[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (offset / 8) | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p
}

#[test]
fn audit_follows_fragments_through_the_capture() {
    let dir = TempDir::new("audit-frag");
    let (branch, server) = ([10, 1, 0, 15], [10, 0, 0, 10]);
    let rdp = tcp(50000, 3389, b"pass");
    let mut pkts = tunnel_traffic();
    let base = pkts.len();
    pkts.extend([
        // What the old gateway sent: the first fragment inside ESP, the later ones in
        // the clear (their first fragment is not in the clear capture).
        ipv4_frag(branch, server, 6, 7, 24, true, &[0x77; 24]),
        ipv4_frag(branch, server, 6, 7, 48, false, &[0x77; 8]),
        // A whole datagram in the clear, in two fragments: both leak, like the first.
        ipv4_frag(branch, server, 6, 8, 0, true, &rdp),
        ipv4_frag(branch, server, 6, 8, 24, false, &[0x77; 8]),
        // A tiny first fragment and a TCP fragment at offset 8: the gateway drops them.
        ipv4_frag(branch, server, 6, 9, 0, true, &rdp[..8]),
        ipv4_frag(branch, server, 6, 10, 8, false, &[0x77; 16]),
        // ESP in UDP 4500, fragmented: both pieces are ESP of SPI 0x2002.
        ipv4_frag(
            B2,
            HO,
            17,
            11,
            0,
            true,
            &udp(4500, 4500, &esp(0x2002, 2))[..24],
        ),
        ipv4_frag(
            B2,
            HO,
            17,
            11,
            24,
            false,
            &udp(4500, 4500, &esp(0x2002, 2))[24..],
        ),
    ]);
    let o = audit(&dir, "frag.pcap", 101, &pkts, true);
    assert_eq!(o.status.code(), Some(1));
    let v = json_lines(&o);
    let at = |n: usize| {
        v.iter()
            .find(|x| x["packet"] == base + n + 1)
            .unwrap_or_else(|| panic!("no finding for packet {}: {v:?}", base + n + 1))
    };
    for n in [0, 1] {
        assert_eq!(at(n)["kind"], "leak", "{}", at(n));
        assert_eq!(at(n)["fragment"], "unresolved", "{}", at(n));
        assert_eq!(at(n)["policy"], "b1-rdp", "{}", at(n));
    }
    for n in [2, 3] {
        assert_eq!(at(n)["kind"], "leak", "{}", at(n));
        assert_eq!(at(n)["policy"], "b1-rdp", "{}", at(n));
        assert!(at(n).get("fragment").is_none(), "{}", at(n));
    }
    assert_eq!(at(4)["kind"], "not-allowed");
    assert_eq!(at(4)["reason"], "fragment_too_short");
    assert_eq!(at(5)["kind"], "not-allowed");
    assert_eq!(at(5)["reason"], "fragment_overlap");
    assert!(
        v.iter()
            .all(|x| x["packet"] != base + 7 && x["packet"] != base + 8)
    );
    let s = v.last().unwrap();
    assert_eq!(s["leaks"], 4, "{s}");
    assert_eq!(s["not_allowed"], 2, "{s}");
    assert_eq!(s["esp_in_udp"][0]["packets"], 3, "{s}");
    let o = audit(&dir, "frag.pcap", 101, &pkts, false);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("a later fragment (its first fragment is not in the capture)"),
        "{text}"
    );
    assert!(
        text.contains("the gateway drops this fragment (fragment_too_short)"),
        "{text}"
    );
}

#[test]
fn lint_budget_ends_a_long_lint_with_a_finding() {
    let dir = TempDir::new("lint-budget");
    let policy = dir.path("many.toml");
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "[[policy]]\nname = \"p{i}\"\ndirection = \"both\"\nlocal = \"10.0.{}.{}\"\naction = \"bypass\"\n",
            i / 256,
            i % 256
        ));
    }
    text.push_str("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n");
    std::fs::write(&policy, text).unwrap();
    let path = policy.to_str().unwrap();
    let full = ipsec(&["policy", "lint", path, "--json"]);
    assert!(!String::from_utf8_lossy(&full.stdout).contains("\"budget\""));
    let cut = ipsec(&["policy", "lint", path, "--json", "--budget", "500"]);
    let out = String::from_utf8_lossy(&cut.stdout);
    let budget: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"code\":\"budget\""))
        .collect();
    assert_eq!(budget.len(), 1, "{out}");
    assert!(budget[0].contains("500 steps"), "{}", budget[0]);
}

// --- issue 11, item 7: lint and firewall see what the loaders refuse -----------------

/// A 19-byte AES-128-GCM key, AES-CBC without integrity and three inbound SAs on one
/// SPI: `policy lint` reports each as an `invalid` error (exit 1), and `policy
/// firewall` lists no openings for these SAs: the file does not load (exit 2).
#[test]
fn lint_reports_and_firewall_refuses_sas_that_cannot_exist() {
    let sa = |name: &str, spi: &str, dir: &str, cipher: &str, key: &str, extra: &str| {
        format!(
            "[[sa]]\nname = \"{name}\"\nspi = {spi}\ndirection = \"{dir}\"\nmode = \
             \"tunnel\"\ncipher = \"{cipher}\"\nkey = \"{key}\"\n{extra}\n"
        )
    };
    let text = format!(
        r#"
[[policy]]
name = "ike"
local = "192.0.2.1"
remote = "192.0.2.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"

[[policy]]
name = "lan"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "deny"
action = "discard"

{}{}{}{}"#,
        sa(
            "out",
            "0x1000",
            "outbound",
            "aes-128-gcm",
            &"3c".repeat(19),
            "tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\""
        ),
        sa(
            "in",
            "0x2000",
            "inbound",
            "aes-128-cbc",
            &"4d".repeat(16),
            ""
        ),
        sa(
            "in-2",
            "0x2000",
            "inbound",
            "aes-128-gcm",
            &"5e".repeat(20),
            ""
        ),
        sa(
            "in-3",
            "0x2000",
            "inbound",
            "aes-128-gcm",
            &"6f".repeat(20),
            ""
        ),
    );
    let dir = TempDir::new("lint-sas");
    let file = dir.path("policy.toml");
    std::fs::write(&file, text).unwrap();
    let p = file.to_str().unwrap();

    let o = ipsec(&["policy", "lint", p, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let invalid: Vec<String> = json_lines(&o)
        .iter()
        .filter(|f| f["code"] == "invalid")
        .map(|f| {
            assert_eq!(f["severity"], "error");
            f["message"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(invalid.len(), 4, "{invalid:#?}");
    assert!(
        invalid[0].contains("sa \"out\": key: aes-128-gcm needs a 20-byte key"),
        "{}",
        invalid[0]
    );
    assert!(invalid[1].contains("sa \"in\": integrity: aes-128-cbc needs an integrity"));
    assert!(invalid[2].contains("sa \"in-2\": spi: inbound sa \"in\" already has SPI"));
    assert!(invalid[3].contains("sa \"in-3\": spi: inbound sa \"in\" already has SPI"));

    let o = ipsec(&["policy", "firewall", p, "--json"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(o.stdout.is_empty(), "no openings: {o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sa \"out\": key") && err.contains("sa \"in-3\": spi"),
        "{err}"
    );
}
