"""Keep secrets out of logs, errors and metrics.

Invariants:
- Any text that may carry a connection string passes through :func:`redact` before it
  is logged or stored. It masks, with ``***``:
  - the password of a libpq URL (``postgresql://user:PASSWORD@host``, any case, also
    inside a longer text such as an exception message or a traceback), up to the URL's
    last ``@``, so an unencoded ``@``, ``/`` or ``#`` in it does not leave a part shown;
  - the value of ``password=`` in a libpq keyword string or an environment dump
    (``password='a b'``, ``PGPASSWORD=x``);
  - every secret registered with :func:`register_secret`, wherever it appears: the key
    material of every keyring the process loaded (listener/crypto.py registers it) and
    the password of the worker's own DSN, so that even a bare password or key in an
    error message is masked.
- :func:`redact_with_dsn` also masks the password of one given DSN that nobody
  registered (a tenant's), every reading of it that listener/dsn.py finds.
- Passwords are found by listener/dsn.py (the one parser of libpq URLs), never here.
- :func:`redact_value` redacts any value a log line may carry: strings, the keys and
  values of mappings, the items of sequences, and every other object through its text
  (exceptions, paths, UUIDs...), so what reaches a renderer is plain data already masked.
  A mapping entry whose key names a secret (``password``, ``secret``, ``token``...) is
  masked whole.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
from collections.abc import Mapping
from typing import Any

from listener.dsn import MIN_PIECE, URL_IN_TEXT, dsn_passwords

MASK = "***"

# A quoted libpq value may hold escaped quotes ('it\'s'); an unquoted one ends at a space.
_KV_PASSWORD = re.compile(r"(?P<key>password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'?|\S+)", re.IGNORECASE)
# Field names whose value is a secret whatever it looks like.
_SECRET_FIELD = re.compile(
    r"(?:^|_)(?:password|passwd|secret|token|api_?key|private_?key|encryption_?keys?)$",
    re.IGNORECASE,
)
# Shorter registered secrets would mask ordinary words; URLs and password= still are.
MIN_SECRET_LENGTH = 6

_secrets: tuple[str, ...] = ()
_secrets_lock = threading.Lock()


def register_secret(text: str) -> None:
    """Mask ``text`` wherever it appears in redacted text from now on (in this process).
    Strings shorter than :data:`MIN_SECRET_LENGTH` are ignored."""
    global _secrets  # noqa: PLW0603 - one registry per process, replaced atomically
    if len(text) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if text not in _secrets:
            # Longest first, so a secret that contains another is masked whole.
            _secrets = tuple(sorted({*_secrets, text}, key=len, reverse=True))


def register_key_material(material: bytes) -> None:
    """Register the text forms a key's bytes can take in configuration or a dump:
    base64url (how pgwake writes keys), standard base64 and hex."""
    for form in (
        base64.urlsafe_b64encode(material).rstrip(b"=").decode("ascii"),
        base64.b64encode(material).rstrip(b"=").decode("ascii"),
        material.hex(),
    ):
        register_secret(form)


def register_dsn(dsn: str) -> None:
    """Register the password of a libpq URL (raw and percent-decoded, and every reading
    of a malformed one: listener/dsn.py), if it has one."""
    for password in dsn_passwords(dsn):
        register_secret(password)


def redact(text: str) -> str:
    """Return ``text`` with passwords in libpq URLs and key=value strings, and every
    registered secret, masked."""
    text = URL_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m['key']}{MASK}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_with_dsn(text: str, dsn: str) -> str:
    """:func:`redact` ``text``, and mask every reading of ``dsn``'s password in it too
    (listener/dsn.py; pieces shorter than MIN_PIECE are left): the error text of a
    malformed DSN nobody registered (a tenant's) may echo parts of it."""
    text = redact(text)
    for password in sorted(dsn_passwords(dsn), key=len, reverse=True):
        if len(password) >= MIN_PIECE:
            text = text.replace(password, MASK)
    return text


def display_dsn(dsn: str) -> str:
    """A DSN safe to show a person: password masked."""
    return redact(dsn)


def redact_field(name: str, value: Any) -> Any:
    """The value of a field called ``name``, redacted; masked whole when the name says
    it is a secret (``password``, ``db_password``, ``api_key``...)."""
    return MASK if _secret_name(name) else redact_value(value)


@functools.lru_cache(maxsize=1024)
def _secret_name(name: str) -> bool:
    """True when a field called ``name`` holds a secret (field names are few: cached)."""
    return _SECRET_FIELD.search(name) is not None


def redact_value(value: Any) -> Any:  # noqa: PLR0911 - one return per kind of value
    """``value`` with every secret masked, as plain data (str, numbers, bools, None,
    dicts and lists); any other object becomes its redacted text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(str(k)): redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact_value(item) for item in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    return redact(str(value))
