//! No secret of a policy or SA file ever shows in an error message, a lint finding or a
//! `Debug` output, whatever shape the file is in (issue 11, item 1).
//!
//! Every file of `tests/data/secret-shapes/` (one malformed-secret shape each, see its
//! README) goes through every loader of the core; every text that comes out is searched
//! for any 8 consecutive characters of any secret of `secrets.txt`.

use core::time::Duration;
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::lint_toml;
use ipsec_core::{Gateway, SecurityAssociation, Spd};
use std::path::{Path, PathBuf};

fn shapes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/secret-shapes")
}

/// `(file name, text)` of every shape, sorted.
fn shapes() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(shapes_dir())
        .expect("shapes directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("shape readable"))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 30, "only {} shapes", out.len());
    out
}

/// The secrets the shapes hold (hex keys, and the digits of a key written as a number).
fn secrets() -> Vec<String> {
    std::fs::read_to_string(shapes_dir().join("secrets.txt"))
        .expect("secrets.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Panics if `out` holds any 8 consecutive characters of a secret (in any letter case).
fn assert_no_secret(shape: &str, what: &str, out: &str) {
    let low = out.to_ascii_lowercase();
    for s in secrets() {
        for piece in s.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("ascii");
            assert!(
                !low.contains(piece),
                "{shape}: {what} shows {piece:?}, a piece of a secret:\n{out}"
            );
        }
    }
}

/// Every text the core gives about `text`: load errors (first and all), SA errors, SA
/// creation errors, lint findings, cases-file errors, and the `Debug` of whatever loaded.
/// The second value says whether anything refused the file.
fn everything_said_about(text: &str) -> (Vec<(&'static str, String)>, bool) {
    let mut out = Vec::new();
    let mut refused = false;
    match Spd::from_toml(text) {
        Err(e) => {
            refused = true;
            out.push(("Spd::from_toml", e.to_string()));
            out.push(("Spd::from_toml Debug", format!("{e:?}")));
        }
        Ok(spd) => {
            out.push(("Spd Debug", format!("{spd:?}")));
            for f in spd.lint() {
                out.push(("Spd::lint", format!("{f} {f:?}")));
            }
            match Gateway::new(spd, Duration::ZERO) {
                Err(e) => {
                    refused = true;
                    out.push(("Gateway::new", format!("{e} {e:?}")));
                }
                Ok(g) => out.push(("Gateway Debug", format!("{g:?}"))),
            }
        }
    }
    if let Err(all) = Spd::from_toml_all_errors(text) {
        for e in all {
            out.push(("Spd::from_toml_all_errors", format!("{e} {e:?}")));
        }
    }
    match parse_sa_file(text) {
        Err(e) => out.push(("parse_sa_file", format!("{e} {e:?}"))),
        Ok(sas) => {
            out.push(("parse_sa_file Debug", format!("{sas:?}")));
            for s in sas {
                match SecurityAssociation::new(s.config, Duration::ZERO) {
                    Err(e) => out.push(("SecurityAssociation::new", format!("{e} {e:?}"))),
                    Ok(sa) => out.push(("SecurityAssociation Debug", format!("{sa:?}"))),
                }
            }
        }
    }
    for f in lint_toml(text) {
        out.push(("lint_toml", format!("{f} {f:?}")));
    }
    // The file given where a cases file belongs (swapped arguments).
    let spd = Spd::from_toml("").expect("empty policy");
    if let Err(e) = spd.run_cases(text) {
        out.push(("Spd::run_cases", format!("{e} {e:?}")));
    }
    (out, refused)
}

#[test]
fn no_shape_of_a_malformed_secret_is_ever_echoed() {
    for (name, text) in shapes() {
        let (said, refused) = everything_said_about(&text);
        assert!(refused, "{name}: loaded without any error");
        for (what, out) in &said {
            assert_no_secret(&name, what, out);
        }
        // The line of the problem is still shown (masked) for TOML syntax errors.
        if let Err(e) = Spd::from_toml(&text)
            && e.field() == "toml"
        {
            assert!(e.message().contains("line "), "{name}: {e}");
        }
    }
}

#[test]
fn load_from_a_file_reports_the_same_redacted_errors() {
    let dir = std::env::temp_dir().join(format!("ipsec-secret-shapes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, text) in shapes() {
        let path = dir.join(&name);
        std::fs::write(&path, &text).expect("write");
        match Spd::load(&path) {
            Err(e) => assert_no_secret(&name, "Spd::load", &format!("{e} {e:?}")),
            Ok(spd) => assert_no_secret(&name, "Spd::load Debug", &format!("{spd:?}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shapes are malformed around a well-formed file: that file loads, so the errors
/// above come from the shapes themselves.
#[test]
fn the_template_of_the_shapes_loads() {
    let (_, text) = shapes()
        .into_iter()
        .find(|(n, _)| n == "trailing-garbage.toml")
        .expect("shape");
    let fixed = text.replace(" garbage", "");
    let spd = Spd::from_toml(&fixed).expect("the template loads");
    Gateway::new(spd, Duration::ZERO).expect("its SAs are valid");
}
