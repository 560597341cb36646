//! Build script of ipsec-core. It does nothing unless the `ipsec-mb` feature is on;
//! then it compiles `native/ipsec_mb_shim.c` (plain C functions over intel-ipsec-mb's
//! macro API, see `src/crypto/ipsec_mb.rs`) with the `cc` crate and links
//! `-lIPSec_MB`.
//!
//! The feature is asked for explicitly, so a missing library is a build error that
//! says what to install; there is no silent fallback to the portable backends.
//! `IPSEC_MB_INCLUDE_DIR` and `IPSEC_MB_LIB_DIR` point at a library installed
//! outside the compiler's default paths.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Cargo sets CARGO_FEATURE_IPSEC_MB exactly when it compiles this script with
    // `feature = "ipsec-mb"` (and with the optional `cc` build dependency).
    #[cfg(feature = "ipsec-mb")]
    ipsec_mb::build();
}

#[cfg(feature = "ipsec-mb")]
mod ipsec_mb {
    use std::path::PathBuf;
    use std::process::Command;

    const SHIM: &str = "native/ipsec_mb_shim.c";

    const MISSING: &str = "\
ipsec-core's `ipsec-mb` feature needs intel-ipsec-mb (1.x): the header
intel-ipsec-mb.h and the library libIPSec_MB. On Debian/Ubuntu:
    apt-get install libipsec-mb-dev
or set IPSEC_MB_INCLUDE_DIR / IPSEC_MB_LIB_DIR to where it is installed.
Build without the feature to use the portable backends (ring / RustCrypto).";

    fn dir(var: &str) -> Option<PathBuf> {
        println!("cargo:rerun-if-env-changed={var}");
        std::env::var_os(var).map(PathBuf::from)
    }

    pub(super) fn build() {
        assert!(
            std::env::var_os("CARGO_FEATURE_IPSEC_MB").is_some(),
            "cfg and CARGO_FEATURE_IPSEC_MB disagree"
        );
        println!("cargo:rerun-if-changed={SHIM}");
        let include = dir("IPSEC_MB_INCLUDE_DIR");
        let lib = dir("IPSEC_MB_LIB_DIR");

        let mut build = cc::Build::new();
        build
            .file(SHIM)
            .std("c11")
            .warnings(true)
            .extra_warnings(true);
        if let Some(inc) = &include {
            build.include(inc);
        }

        // Probe: compile and link a one-line program against the library, so that a
        // missing header or library fails here with MISSING, not later in rustc's link
        // step with a bare "cannot find -lIPSec_MB".
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
        let probe = out.join("ipsec_mb_probe.c");
        std::fs::write(
            &probe,
            "#include <intel-ipsec-mb.h>\n\
             int main(void) { return imb_get_version() >= IMB_VERSION(1, 0, 0) ? 0 : 1; }\n",
        )
        .expect("write the probe");
        let compiler = build.get_compiler();
        let mut cmd: Command = compiler.to_command();
        if let Some(inc) = &include {
            cmd.arg("-I").arg(inc);
        }
        cmd.arg(&probe).arg("-o").arg(out.join("ipsec_mb_probe"));
        if let Some(l) = &lib {
            cmd.arg("-L").arg(l);
        }
        cmd.arg("-lIPSec_MB");
        // The command line only: `Command`'s Debug would print the whole environment.
        let line = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        match cmd.output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "\n{MISSING}\n\nThe probe `{line}` failed:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("\n{MISSING}\n\nThe C compiler could not run: {e}"),
        }

        build.compile("ipsec_mb_shim");
        if let Some(l) = &lib {
            println!("cargo:rustc-link-search=native={}", l.display());
        }
        println!("cargo:rustc-link-lib=dylib=IPSec_MB");
    }
}
