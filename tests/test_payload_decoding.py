"""The claim decodes each job's payload with listener.db.decode_json: the value
json.loads gives for any text, and for text json.loads refuses an UndecodableJson
naming why, never an exception. jsonb text (no whitespace around the value) takes the
decoder's scanner alone; anything else json.loads' own path. No database."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from listener.db import UndecodableJson, decode_json

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and infinities too: json.loads reads them
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
SPACE = st.sampled_from(["", " ", "\n", "\t", " \r\n "])


def same(decoded: Any, text: str) -> None:
    """``decoded`` is what json.loads makes of ``text``, or says why it cannot."""
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError):
        assert isinstance(decoded, UndecodableJson), (text, decoded)
        assert decoded.text == text
        assert decoded.reason
        return
    assert not isinstance(decoded, UndecodableJson), (text, decoded.reason)
    assert repr(decoded) == repr(expected)  # repr: NaN equals itself, -0.0 is not 0.0


@settings(max_examples=300, deadline=None)
@given(VALUES, SPACE, SPACE)
def test_json_text_decodes_as_json_loads_does(value: Any, before: str, after: str) -> None:
    """Any value's text, bare (as jsonb gives it) or with whitespace around it."""
    text = before + json.dumps(value) + after
    same(decode_json(text), text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='{}[]",:0123456789.eE+-tfrunal \n\\x') | st.text())
def test_any_text_decodes_or_says_why(text: str) -> None:
    """Garbage, truncated values, extra data after a value, the empty string."""
    same(decode_json(text), text)


def test_the_refusals_are_named() -> None:
    """Extra data after a value, nesting past the decoder's limit and an integer past
    Python's digit limit are refused with reasons (the last without Python's advice to
    whoever runs it)."""
    cases = {
        '{"a": 1} x': "Extra data",
        "[" * 100_000 + "]" * 100_000: "nested deeper",
        "1" * 5000: "digits",
        "": "Expecting value",
    }
    for text, reason in cases.items():
        decoded = decode_json(text)
        assert isinstance(decoded, UndecodableJson), text[:20]
        assert reason in decoded.reason, decoded.reason
        assert "sys.set_int_max_str_digits" not in decoded.reason
    assert decode_json('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
