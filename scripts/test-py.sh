#!/usr/bin/env bash
# The Python package's test stage: builds a fresh wheel of ipsec-py, installs it into the
# repository's .venv, and runs stubtest, mypy --strict and pytest.
# Usage (from anywhere): ./scripts/test-py.sh
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n=== %s ===\n' "$*"; }

stage "Python venv (maturin, pytest, mypy, scapy, cryptography)"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r ipsec-py/requirements-test.txt

stage "wheel (maturin build --release)"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
.venv/bin/maturin build --release --locked -m ipsec-py/Cargo.toml -o "$wheels"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --force-reinstall \
  --no-deps "$wheels"/ipsec-*.whl

tests_start=$(date +%s)
# Run from a directory where ./ipsec-py/python is not importable, so that the installed
# wheel (with its compiled extension and stubs) is what is tested.
stage "stubtest (the .pyi stubs against the compiled module)"
(cd ipsec-py && ../.venv/bin/python -m mypy.stubtest ipsec --allowlist stubtest-allowlist.txt)

stage "mypy --strict (examples/python, ipsec-py/tests)"
.venv/bin/python -m mypy --strict --config-file ipsec-py/pyproject.toml examples/python ipsec-py/tests

stage "pytest (ipsec-py/tests)"
.venv/bin/python -m pytest -q -c ipsec-py/tests/pytest.ini ipsec-py/tests

echo
echo "Python stage passed ($(( $(date +%s) - tests_start )) s after the wheel build)"
