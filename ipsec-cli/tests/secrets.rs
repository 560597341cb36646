//! No secret of a policy or SA file ever shows on the CLI's stdout or stderr, whatever
//! shape the file is in (issue 11, item 1).
//!
//! Every malformed-secret file of `ipsec-core/tests/data/secret-shapes/` (trailing
//! garbage, a duplicated `key =` line, a bare integer, an unterminated string, the same
//! for `integrity_key`, ...; see its README) is given to every command that reads a
//! policy, SA or cases file; everything the command prints is searched for any 8
//! consecutive characters of any secret of `secrets.txt`.

mod common;

use common::{TempDir, ipsec};
use std::path::{Path, PathBuf};

fn shapes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ipsec-core/tests/data/secret-shapes")
}

/// The paths of every shape, sorted.
fn shapes() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(shapes_dir())
        .expect("shapes directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    assert!(out.len() >= 30, "only {} shapes", out.len());
    out
}

/// The secrets the shapes hold.
fn secrets() -> Vec<String> {
    std::fs::read_to_string(shapes_dir().join("secrets.txt"))
        .expect("secrets.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Panics if `out` holds any 8 consecutive characters of a secret (in any letter case).
fn assert_no_secret(secrets: &[String], shape: &str, what: &str, out: &str) {
    let low = out.to_ascii_lowercase();
    for s in secrets {
        for piece in s.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("ascii");
            assert!(
                !low.contains(piece),
                "{shape}: `ipsec {what}` shows {piece:?}, a piece of a secret:\n{out}"
            );
        }
    }
}

#[test]
fn no_command_echoes_a_malformed_secret() {
    let secrets = secrets();
    let dir = TempDir::new("secrets");
    let flows = dir.path("flows.csv");
    std::fs::write(&flows, "outbound,10.0.0.1,10.1.0.1,tcp,1000,22\n").expect("flows");
    let capture = dir.path("missing.pcap");
    let out_pcap = dir.path("out.pcap");
    let good_policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/branch-office.toml");
    let good = good_policy.to_str().expect("utf-8 path");
    for path in shapes() {
        let shape = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let file = path.to_str().expect("utf-8 path");
        let commands: Vec<Vec<&str>> = vec![
            vec!["policy", "lint", file],
            vec!["policy", "lint", file, "--json"],
            vec!["policy", "firewall", file],
            vec!["policy", "explain", file, "--json"],
            vec!["policy", "test", file, file],
            // The shape given where a cases file belongs.
            vec!["policy", "test", good, file],
            vec![
                "policy",
                "lookup",
                file,
                "--flows",
                flows.to_str().expect("utf-8"),
            ],
            vec![
                "pcap",
                "encrypt",
                "--sa",
                file,
                capture.to_str().expect("utf-8"),
                out_pcap.to_str().expect("utf-8"),
            ],
            vec![
                "pcap",
                "decrypt",
                "--sa",
                file,
                capture.to_str().expect("utf-8"),
                out_pcap.to_str().expect("utf-8"),
            ],
            vec!["pcap", "audit", file, capture.to_str().expect("utf-8")],
            vec!["demo", "--policy", file],
        ];
        let mut refused = false;
        for args in commands {
            let out = ipsec(&args);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_no_secret(&secrets, &shape, &args.join(" "), &text);
            refused |= out.status.code() == Some(2);
        }
        assert!(refused, "{shape}: no command refused the file");
    }
}

/// The line of a TOML syntax error is still quoted, with the key masked: the person
/// who wrote the file sees where the problem is.
#[test]
fn a_syntax_error_on_a_key_line_is_shown_masked() {
    let out = ipsec(&[
        "policy",
        "lint",
        shapes_dir()
            .join("trailing-garbage.toml")
            .to_str()
            .expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("line 23"), "{text}");
    assert!(text.contains("key = ****"), "{text}");
}
