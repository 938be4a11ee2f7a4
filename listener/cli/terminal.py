"""Text from the database, made safe to print on an operator's terminal.

Any role that may insert a job writes its tenant, kind and (through a handler) its
error; a confined role is such a role. Printed raw, ``kind = E'report\\x1b]0;owned\\x07'``
would retitle the terminal, and ``E'x\\nINJECTED LINE'`` would forge a line of output.

Invariants:
- :func:`shown` returns text with every control character (C0, DEL, C1: ``\\n``,
  ``\\r``, ``\\t`` and ``\\x1b`` included), every bidirectional override or isolate and
  every line or paragraph separator written as a Python escape (``\\x1b``, ``\\n``,
  ``\\u202e``), so one value is always one line of plain characters. Other text
  (letters of any script, emoji) is left as it is.
- :func:`shown_lines` keeps the line breaks of multi-line text (a traceback), escapes
  everything else in each line, and indents every line, so no line of it can pass for
  a line pgwake printed.
- JSON output needs neither: ``json.dumps`` escapes control characters itself.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls; bidi embeddings, overrides and isolates; the line and
# paragraph separators (which some terminals and editors break lines at).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object) -> str:
    """``value``'s text on one line, with control characters escaped."""
    return _UNSAFE.sub(_escape, str(value))


def shown_lines(text: str, indent: str = "  ") -> str:
    """Multi-line ``text`` with its line breaks kept, everything else escaped, and
    each line indented by ``indent``."""
    return "\n".join(indent + shown(line) for line in text.split("\n"))
