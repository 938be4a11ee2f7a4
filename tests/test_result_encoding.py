"""The executor encodes a handler's result once, with the C encoder made once
(listener.executor.encode_result_json): the text must be exactly json.dumps's with
allow_nan=False, and what json.dumps refuses is refused alike. No database."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from listener.executor import RESULT_ENCODER, _encode_result, encode_result_json

# Any JSON value Python can hold, with the awkward corners: every float (but NaN and
# infinities, tested below), huge ints, any text (surrogates, NUL, line separators),
# non-string keys json.dumps turns into text.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
KEYS = (
    st.text()
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False, allow_infinity=False)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(KEYS, inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_same_text_as_json_dumps(value: Any) -> None:
    """Whatever the value, the text is json.dumps(value, allow_nan=False)'s, byte for byte."""
    assert encode_result_json(value) == json.dumps(value, allow_nan=False)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, {"a": [1, math.nan]}, [{"x": -math.inf}]],
    ids=["nan", "inf", "-inf", "nested nan", "nested -inf"],
)
def test_nan_and_infinity_are_refused_as_json_dumps_refuses_them(value: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        RESULT_ENCODER.encode(value)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        encode_result_json(value)
    encoded, problem = _encode_result(value)
    assert encoded is None
    assert problem is not None
    assert problem.startswith("the handler's result is not JSON")


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), {"when": b"bytes"}, {(1, 2): "tuple key"}], ids=repr
)
def test_values_json_cannot_hold_are_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        encode_result_json(value)
    assert _encode_result(value)[1] is not None


def test_a_cycle_or_a_deep_nest_is_refused_and_the_encoder_still_works() -> None:
    """No cycle markers: a cyclic result ends in RecursionError, reported like a result
    nested too deep; the encoder made once is not left in a broken state."""
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    deep: dict[str, Any] = {}
    for _ in range(100_000):
        deep = {"a": deep}
    for value in (cyclic, deep):
        assert _encode_result(value) == (
            None,
            "the handler's result is nested too deep to encode as JSON",
        )
    assert encode_result_json({"after": [1, 2.5, "x"]}) == '{"after": [1, 2.5, "x"]}'
    # A failure in the middle of a value leaves nothing behind for the next one.
    with pytest.raises(TypeError):
        encode_result_json({"a": 1, "b": {3}})
    assert encode_result_json({"a": 1, "b": [3]}) == '{"a": 1, "b": [3]}'


def test_nul_and_size_limits_still_apply() -> None:
    assert _encode_result({"s": "\x00"})[1] == (
        "the handler's result contains a NUL character, which jsonb cannot store"
    )
    encoded, problem = _encode_result("x" * 2_000_000)
    assert encoded is None
    assert problem is not None
    assert "bytes of JSON" in problem
    assert _encode_result(None) == (None, None)
    assert _encode_result("plain") == ('"plain"', None)
