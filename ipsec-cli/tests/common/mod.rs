//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `ipsec` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ipsec");

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ipsec-cli-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `ipsec ARGS...` and collects its output.
pub(crate) fn ipsec(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run the ipsec binary")
}

/// The Internet checksum of `data`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut acc = 0u32;
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}
