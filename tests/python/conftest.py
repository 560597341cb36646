"""pytest fixtures for the live scapy <-> `ipsec` CLI interop suite.

The Rust side is driven through the `ipsec` binary (crate ipsec-cli).  It is
looked up in the environment variable ``IPSEC_BIN``, else at
``<repo>/target/release/ipsec`` where ``<repo>`` is found from this file's
location (tests/python/ -> two levels up).  A missing binary is a hard test
*error* with instructions, never a silent skip.
"""

import os
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_BIN = os.path.join(REPO_ROOT, "target", "release", "ipsec")
BUILD_HINT = "run `cargo build --release -p ipsec-cli` in %s (or set IPSEC_BIN)" % REPO_ROOT


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def ipsec_bin():
    """Absolute path of the `ipsec` binary; fails (does not skip) when missing."""
    path = os.environ.get("IPSEC_BIN") or DEFAULT_BIN
    if not os.path.isabs(path):
        path = os.path.join(REPO_ROOT, path)
    if not os.path.isfile(path):
        pytest.fail("ipsec binary not found at %s: %s" % (path, BUILD_HINT), pytrace=False)
    if not os.access(path, os.X_OK):
        pytest.fail("ipsec binary at %s is not executable: %s" % (path, BUILD_HINT), pytrace=False)
    # The suite needs the `pcap` subcommands; say so clearly if this build lacks them.
    probe = subprocess.run([path, "pcap", "--help"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.fail(
            "%s has no working `pcap` subcommand (exit %d): %s\nstderr: %s"
            % (path, probe.returncode, BUILD_HINT, probe.stderr.strip()[:500]),
            pytrace=False,
        )
    return path
