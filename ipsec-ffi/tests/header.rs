//! include/ipsec.h is generated from this crate by cbindgen: this test regenerates it
//! and fails when the committed header differs (`IPSEC_BLESS_HEADER=1` rewrites it),
//! and checks that its version macros are the crate's version.
#![allow(unsafe_code)] // one call: CStr::from_ptr on ipsec_version()

use std::path::PathBuf;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("../include/ipsec.h")
}

/// The header as cbindgen 0.29 (pinned) writes it from `cbindgen.toml`, plus the
/// version macros from Cargo.toml.
fn generate() -> String {
    let dir = crate_dir();
    let mut config =
        cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    config.after_includes = Some(format!(
        "\n/* The version of the library this header belongs to (ipsec_version() at run time). */\n\
         #define IPSEC_VERSION_MAJOR {}\n#define IPSEC_VERSION_MINOR {}\n#define IPSEC_VERSION_PATCH {}\n\
         #define IPSEC_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    ));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn committed_header_is_up_to_date() {
    let fresh = generate();
    let path = header_path();
    if std::env::var_os("IPSEC_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/ipsec.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let first = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/ipsec.h is out of date with ipsec-ffi's source (first difference at line {}:\n  committed: {:?}\n  generated: {:?}).\n\
             Regenerate it with: IPSEC_BLESS_HEADER=1 cargo test -p ipsec-ffi --test header",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            fresh.lines().nth(first).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn version_macros_match_cargo_toml() {
    // While blessing, the other test is rewriting the file: check what it writes.
    let header = if std::env::var_os("IPSEC_BLESS_HEADER").is_some() {
        generate()
    } else {
        std::fs::read_to_string(header_path()).expect("include/ipsec.h exists")
    };
    let macro_value = |name: &str| -> String {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .unwrap_or_else(|| panic!("{name} is not defined in include/ipsec.h"))
            .trim()
            .to_string()
    };
    assert_eq!(
        macro_value("IPSEC_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        macro_value("IPSEC_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        macro_value("IPSEC_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        macro_value("IPSEC_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
    // The library reports the same version at run time.
    // SAFETY: ipsec_version returns a static NUL-terminated string.
    let runtime = unsafe { std::ffi::CStr::from_ptr(ipsec::ipsec_version()) };
    assert_eq!(runtime.to_str().expect("UTF-8"), env!("CARGO_PKG_VERSION"));
}
