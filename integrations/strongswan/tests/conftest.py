"""pytest fixtures for the strongSwan test bed (integrations/strongswan/netns.py).

strongSwan is installed on demand by ``netns.ensure_strongswan()``; when that is not
possible (not root, no apt, no network) every test *fails* with the reason, never skips.
The baseline figures tests record with ``record_baseline`` are printed in the terminal
summary (they are measurements, not assertions).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import netns  # noqa: E402  (integrations/strongswan/netns.py, found through sys.path above)

_baseline_lines = []


@pytest.fixture(scope="session")
def strongswan():
    """Fails every test that needs strongSwan when it is not (and cannot be) installed."""
    reason = netns.ensure_strongswan()
    if reason:
        pytest.fail("strongSwan test bed unavailable: " + reason, pytrace=False)
    stale = netns.cleanup_stale_runs()
    if stale:
        print("removed what dead runs left behind: " + " ".join(stale))


@pytest.fixture(scope="session")
def record_baseline():
    """Function that adds one line to the baseline table of the terminal summary."""
    return _baseline_lines.append


def pytest_terminal_summary(terminalreporter):
    if _baseline_lines:
        terminalreporter.section("strongSwan measurements (libipsec baseline, rekey comparison; not asserted)")
        for line in _baseline_lines:
            terminalreporter.write_line(line)
