#!/usr/bin/env python3
"""Audit an IPsec policy file: lint findings, the firewall openings IPsec needs, and
(optionally) the policy tests of a cases file, as one readable report.

    python examples/python/audit_policy.py examples/branch-office.toml \
        examples/branch-office-cases.toml

Exit status: 0 when the policy loads, has no lint error and every case passes; 1 when
there is a lint error or a failing case; 2 when a file cannot be read or parsed.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Optional, Sequence

import ipsec


def heading(title: str) -> str:
    return "\n%s\n%s" % (title, "-" * len(title))


def report_lint(findings: Sequence[ipsec.Finding]) -> list[str]:
    lines = [heading("Lint")]
    if not findings:
        lines.append("no findings")
        return lines
    counts = Counter(f.severity for f in findings)
    order = {"error": 0, "warning": 1, "info": 2}
    for f in sorted(findings, key=lambda f: order.get(f.severity, 3)):
        where = "policy %r" % f.policy if f.policy else "file"
        lines.append("%-7s %-24s %-22s %s" % (f.severity.upper(), f.code, where, f.message))
    lines.append("%d error(s), %d warning(s), %d info" % (
        counts["error"], counts["warning"], counts["info"]))
    return lines


def report_firewall(openings: Sequence[ipsec.FirewallOpening]) -> list[str]:
    lines = [heading("Firewall openings between the gateways")]
    if not openings:
        lines.append("none (the policy names no SA with tunnel endpoints)")
    for o in openings:
        what = ("UDP port %d" % o.port if o.port is not None
                else "IP protocol %d (%s, not a port)" % (o.protocol, o.protocol_name))
        lines.append("%-15s -> %-15s %-32s %s: %s" % (o.src, o.dst, what, o.label, o.reason))
    return lines


def report_cases(report: ipsec.CaseReport) -> list[str]:
    lines = [heading("Policy tests")]
    for o in report.outcomes:
        lines.append("%s  %s" % ("PASS" if o.passed else "FAIL", o.name))
        if not o.passed:
            lines.append("      %s" % o.message)
    lines.append("%d passed, %d failed" % (report.passed, report.failed))
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("policy", help="policy file ([[policy]] and [[sa]] tables)")
    parser.add_argument("cases", nargs="?", help="cases file ([[case]] tables)")
    args = parser.parse_args(argv)

    lines = ["Policy audit of %s" % args.policy]
    try:
        with open(args.policy) as f:
            text = f.read()
    except OSError as e:
        print("cannot read %s: %s" % (args.policy, e), file=sys.stderr)
        return 2
    try:
        spd = ipsec.Spd.from_toml(text)
    except ipsec.ConfigError:
        # Every load problem, not just the first, as `invalid` findings.
        lines += report_lint(ipsec.lint_toml(text))
        print("\n".join(lines))
        return 2
    lines.append("%d policies: %s" % (len(spd), ", ".join(spd.policy_names)))
    findings = spd.lint()
    lines += report_lint(findings)
    lines += report_firewall(spd.firewall_openings())
    failed = 0
    if args.cases:
        try:
            report = spd.run_cases_file(args.cases)
        except ipsec.ConfigError as e:
            print("\n".join(lines))
            print("bad cases file %s: %s" % (args.cases, e), file=sys.stderr)
            return 2
        lines += report_cases(report)
        failed = report.failed
    errors = sum(1 for f in findings if f.severity == "error")
    verdict = "OK" if errors == 0 and failed == 0 else "PROBLEMS FOUND"
    lines.append("\nVerdict: %s (%d lint error(s), %d failing case(s))" % (verdict, errors, failed))
    print("\n".join(lines))
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    sys.exit(main())
