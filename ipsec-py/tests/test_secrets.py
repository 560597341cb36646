"""No secret of a policy or SA file ever shows in what the Python API says about it
(issue 11, item 1).

Every malformed-secret file of ipsec-core/tests/data/secret-shapes/ (trailing garbage
after ``key = "..."``, a duplicated ``key =`` line, a key as a bare integer, an
unterminated string, the same for ``integrity_key``, ...; see its README) goes through
every loader of the package; ``str()``, ``repr()``, ``.args`` and ``.field`` of every
``ConfigError``, every ``lint_toml`` finding and the ``repr()`` of whatever loaded are
searched for any 8 consecutive characters of any secret of ``secrets.txt``.
"""

from __future__ import annotations

import os
import traceback
from typing import Callable

import pytest

import ipsec
from helpers import REPO_ROOT

SHAPES = os.path.join(REPO_ROOT, "ipsec-core", "tests", "data", "secret-shapes")


def shape_names() -> list[str]:
    names = sorted(n for n in os.listdir(SHAPES) if n.endswith(".toml"))
    assert len(names) >= 30, names
    return names


def secrets() -> list[str]:
    with open(os.path.join(SHAPES, "secrets.txt")) as f:
        return [line.strip() for line in f if line.strip()]


def assert_no_secret(shape: str, what: str, text: str) -> None:
    low = text.lower()
    for s in secrets():
        for i in range(len(s) - 7):
            piece = s[i : i + 8]
            assert piece not in low, f"{shape}: {what} shows {piece!r}, a piece of a secret:\n{text}"


def read(shape: str) -> str:
    with open(os.path.join(SHAPES, shape), newline="") as f:
        return f.read()


def said_about(shape: str) -> tuple[list[tuple[str, str]], bool]:
    """Everything the package says about the file, and whether anything refused it."""
    text = read(shape)
    path = os.path.join(SHAPES, shape)
    out: list[tuple[str, str]] = []
    refused = False
    loaders: list[tuple[str, Callable[[], object]]] = [
        ("Spd.from_toml", lambda: ipsec.Spd.from_toml(text)),
        ("Spd.load", lambda: ipsec.Spd.load(path)),
        ("Gateway.from_toml", lambda: ipsec.Gateway.from_toml(text)),
        ("Gateway.load", lambda: ipsec.Gateway.load(path)),
        ("sas_from_toml", lambda: ipsec.sas_from_toml(text)),
        ("load_sas", lambda: ipsec.load_sas(path)),
        # The file given where a cases file belongs.
        ("Spd.run_cases", lambda: ipsec.Spd.from_toml("").run_cases(text)),
        ("Spd.run_cases_file", lambda: ipsec.Spd.from_toml("").run_cases_file(path)),
    ]
    for what, load in loaders:
        try:
            loaded = load()
        except ipsec.ConfigError as e:
            refused = True
            out.append((f"{what}: str(ConfigError)", str(e)))
            out.append((f"{what}: repr(ConfigError)", repr(e)))
            out.append((f"{what}: ConfigError.args", repr(e.args)))
            out.append((f"{what}: ConfigError.field", repr(e.field)))
            out.append((f"{what}: traceback", "".join(traceback.format_exception(e))))
        else:
            out.append((f"{what}: repr", repr(loaded)))
            if isinstance(loaded, ipsec.Spd):
                for f in loaded.lint():
                    out.append((f"{what}: lint()", f"{f.code} {f.policy} {f.message} {f!r}"))
    for f in ipsec.lint_toml(text):
        out.append(("lint_toml", f"{f.severity} {f.code} {f.policy} {f.message} {f!r}"))
    return out, refused


@pytest.mark.parametrize("shape", shape_names())
def test_no_layer_echoes_a_malformed_secret(shape: str) -> None:
    said, refused = said_about(shape)
    assert refused, f"{shape}: loaded without any error"
    for what, text in said:
        assert_no_secret(shape, what, text)


def test_a_syntax_error_on_a_key_line_is_shown_masked() -> None:
    text = read("trailing-garbage.toml")
    with pytest.raises(ipsec.ConfigError) as info:
        ipsec.Spd.from_toml(text)
    assert info.value.field == "toml"
    assert "line 23" in str(info.value)
    assert "key = ****" in str(info.value)
    findings = ipsec.lint_toml(text)
    assert [f.code for f in findings] == ["invalid"]
    assert "key = ****" in findings[0].message
