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
