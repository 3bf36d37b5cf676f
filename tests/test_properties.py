"""Property-based tests (hypothesis): parsers of user text and the episodes log reader.

Whatever the input, the budget parser and the oracle-spec parser either return a
well-formed value or raise the project's own error (one line, never another
exception type), and the episodes reader never raises, returns only dict
records, and keeps every valid record in order.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oracles
from hwprune.budgets import QUANTITIES, Budget, parse_budget, parse_oracle_overrides
from hwprune.errors import BudgetError
from hwprune.evaluate.log import read_jsonl
from oracles.base import parse_spec
from oracles.errors import OracleError, OracleSpecError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text close to budgets: their own alphabet plus digits and symbols from elsewhere.
BUDGET_ALPHABET = (
    string.ascii_letters + string.digits + "<=>%.+-_ eE\t"
    + "µμ٥１≤‹＝\u00a0\u2009\u200bⅤ²"
)  # fmt: skip
QUANTITY_WORDS = st.sampled_from([*QUANTITIES, "peak-memory", "macs", "parameters", "energy"])
UNITS = st.sampled_from(["", "ms", "us", "µs", "s", "k", "M", "G", "T", "MiB", "GiB", "KB",
                         "b", "%", "x", "ms%", "M%"])  # fmt: skip


def _check_budget(text: str) -> None:
    try:
        budget = parse_budget(text)
    except BudgetError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(budget, Budget)
    assert budget.quantity in QUANTITIES
    assert math.isfinite(budget.limit) and budget.limit > 0
    assert not budget.relative or budget.limit <= 1.0
    assert text.strip().isascii() or "µ" in text  # only ASCII (and the micro sign) parses


@SETTINGS
@given(st.text(alphabet=BUDGET_ALPHABET, max_size=40))
def test_budget_parser_returns_a_budget_or_raises_budget_error(text: str) -> None:
    _check_budget(text)


@SETTINGS
@given(st.text(max_size=40))
def test_budget_parser_on_any_unicode(text: str) -> None:
    _check_budget(text)


@SETTINGS
@given(
    QUANTITY_WORDS,
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(min_value=-(10**400), max_value=10**400).map(str),
        st.from_regex(r"[0-9]{1,4}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
    ),
    UNITS,
    st.sampled_from(["", " ", "  "]),
)
def test_budget_parser_on_budget_shaped_text(q: str, number: str, unit: str, pad: str) -> None:
    text = f"{q}{pad}<={pad}{number}{unit}"
    _check_budget(text)


@SETTINGS
@given(st.floats(min_value=1e-6, max_value=1e6), st.sampled_from(["ms", "us", "s"]))
def test_valid_latency_budgets_round_trip(value: float, unit: str) -> None:
    budget = parse_budget(f"latency<={value!r}{unit}")
    scale = {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]
    assert budget.limit == pytest.approx(value * scale)


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=3))
def test_oracle_overrides_raise_only_budget_error(items: list[str]) -> None:
    try:
        out = parse_oracle_overrides(items)
    except BudgetError as exc:
        assert "\n" not in str(exc)
        return
    assert set(out) <= set(QUANTITIES)


SPEC_ALPHABET = string.ascii_letters + string.digits + ":?&=%._- " + "١é\u00a0"
SPEC_NAMES = st.sampled_from([*oracles.list_oracles(), "onnxruntme", "", "x"])
SPEC_KEYS = st.sampled_from(["threads", "batch", "warmup", "min_runs", "max_runs", "min_time",
                             "max_time", "rel_ci", "dtype", "pool", "opt_level", "fp16",
                             "sessions", "bogus", ""])  # fmt: skip
SPEC_VALUES = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=SPEC_ALPHABET, max_size=8),
)


@st.composite
def spec_like(draw: st.DrawFn) -> str:
    name = draw(SPEC_NAMES)
    device = draw(st.sampled_from(["", ":cpu", ":cuda", ":tensorrt", ":gpu", ":"]))
    pairs = draw(st.lists(st.tuples(SPEC_KEYS, SPEC_VALUES), max_size=4))
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return name + device + (f"?{query}" if pairs or draw(st.booleans()) else "")


def _check_spec(spec: str) -> None:
    try:
        name, device, params = parse_spec(spec)
    except OracleSpecError as exc:
        assert "\n" not in str(exc)
        return
    assert name and name == name.strip().lower()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    try:
        oracle = oracles.get_oracle(spec, check=False)
    except OracleError as exc:  # never a bare ValueError/TypeError from a setting
        assert "\n" not in str(exc)
        return
    threads = getattr(oracle, "threads", None)
    if threads is not None:
        assert 1 <= threads <= (__import__("os").cpu_count() or 1)
    # A built oracle's canonical spec reads back to the same oracle.
    assert oracles.get_oracle(oracle.spec, check=False).spec == oracle.spec


@SETTINGS
@given(spec_like())
def test_oracle_spec_parser_on_spec_shaped_text(spec: str) -> None:
    _check_spec(spec)


@SETTINGS
@given(st.text(alphabet=SPEC_ALPHABET, max_size=40))
def test_oracle_spec_parser_on_random_text(spec: str) -> None:
    _check_spec(spec)


# ------------------------------------------------------------------------- episodes log

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),  # fmt: skip
    max_leaves=8,
)


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "episodes.jsonl"
    path.write_bytes(data)
    return path


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=400))
def test_episode_reader_never_raises_on_bytes(tmp_path: Path, data: bytes) -> None:
    records = list(read_jsonl(_write(tmp_path, data)))
    assert all(isinstance(r, dict) for r in records)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(JSON_VALUES.map(json.dumps), st.binary(max_size=20).map(
    lambda b: b.replace(b"\n", b"").decode("latin-1"))), max_size=12))  # fmt: skip
def test_episode_reader_keeps_every_object_line_in_order(tmp_path: Path, lines: list[str]) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    expected = []
    for line in lines:
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            expected.append(value)
    records = list(read_jsonl(_write(tmp_path, data)))
    assert records == expected
