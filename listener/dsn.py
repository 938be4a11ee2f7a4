"""The one parser of libpq URLs (``postgresql://user:password@host:port/db?k=v``) in
pgwake: the worker's own DSN, tenants' database DSNs, and the passwords to mask.

Invariants:
- :func:`parse_dsn` accepts exactly the URLs that asyncpg reads the way a person wrote
  them, and refuses the rest with :class:`DsnError`. Its message names the problem and
  the fix (the percent-encoding to use) and never holds any part of the DSN: a password
  with an unencoded ``#``, ``/``, ``?`` or ``@`` makes the URL's parts shift, so the
  "port" or "host" asyncpg would complain about may be the start of the password.
- Refused: a ``#`` anywhere (a fragment: asyncpg drops what follows); in the user name
  or password any character outside RFC 3986's unreserved and sub-delimiter characters,
  ``:`` and ``%XX`` (among them ``@ / ? # [ ] %`` unencoded, spaces, controls and
  anything beyond ASCII); an
  ``@`` after the host part (a ``/`` or ``?`` in the password); a host list entry that
  is neither a name, an IPv4 address nor an IPv6 address in brackets; a port that is
  not 1..65535; a query that is not ``key=value`` pairs; controls and spaces anywhere.
- :func:`dsn_passwords` finds every string that may be the password of a DSN, also of
  one :func:`parse_dsn` refuses (each reading of a malformed URL), for masking: the
  URL's password raw and percent-decoded, the values of ``password=`` in its query, and
  the pieces a malformed password falls into.
- :data:`URL_IN_TEXT` finds the user and password of every libpq URL inside a longer
  text (an exception message, a traceback), reading the password as a person meant it,
  up to the URL's last ``@``, as :func:`dsn_passwords` also does. listener/redact.py
  masks with these two and parses no URL of its own.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, unquote_plus

SCHEMES = ("postgresql://", "postgres://")
# RFC 3986 userinfo: unreserved, sub-delims, ':' and percent-encoded octets. Nothing
# beyond ASCII: Python's URL parser (asyncpg's) raises on some such characters with the
# whole user:password@host in its message.
_USERINFO_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:"
)
_HOST_NAME = re.compile(r"[A-Za-z0-9._\-~%]*")
_BRACKETED = re.compile(r"\[(?P<addr>[^\[\]]*)\](?::(?P<port>[^:]*))?")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


class DsnError(ValueError):
    """A DSN pgwake refuses; the message holds no part of the DSN."""


@dataclass(frozen=True, slots=True)
class Dsn:
    """The parts of a DSN :func:`parse_dsn` accepted (user and password decoded)."""

    user: str | None
    password: str | None
    hosts: tuple[tuple[str, int | None], ...]
    database: str
    query: tuple[tuple[str, str], ...]


def _encoding_hint(char: str) -> str:
    if char.isspace() or not char.isprintable():
        return "a space or control character, which must be percent-encoded"
    encoded = "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return f"{char!r}, which must be percent-encoded as {encoded}"


def _check_userinfo(userinfo: str) -> None:
    i = 0
    while i < len(userinfo):
        char = userinfo[i]
        if char == "%":
            if not _PCT.match(userinfo, i):
                raise DsnError(
                    "the DSN's user name or password holds '%' not followed by two hex "
                    "digits; write '%' as %25"
                )
            i += 3
            continue
        if char not in _USERINFO_SAFE:
            raise DsnError(f"the DSN's user name or password holds {_encoding_hint(char)}")
        i += 1


def _port(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise DsnError(f"the DSN's {where} has a port that is not a number from 1 to 65535")
    return int(text)


def _host(spec: str, n: int) -> tuple[str, int | None]:
    where = f"host {n}" if n else "host"
    if spec.startswith("["):
        match = _BRACKETED.fullmatch(spec)
        addr = match["addr"].split("%", 1)[0] if match else ""
        try:
            ipaddress.IPv6Address(addr)
        except ValueError:
            raise DsnError(
                f"the DSN's {where} is a malformed IPv6 address: write it in brackets, "
                "like [2001:db8::1]:5432"
            ) from None
        assert match is not None
        port = match["port"]
        return match["addr"], None if port is None else _port(port, where)
    if "[" in spec or "]" in spec or spec.count(":") > 1:
        raise DsnError(
            f"the DSN's {where} is a malformed IPv6 address: write it in brackets, "
            "like [2001:db8::1]:5432"
        )
    name, colon, port = spec.partition(":")
    if not _HOST_NAME.fullmatch(name):
        raise DsnError(
            f"the DSN's {where} is not a host name or address (percent-encode a socket "
            "directory, like %2Fvar%2Frun%2Fpostgresql)"
        )
    return unquote(name), _port(port, where) if colon else None


def parse_dsn(dsn: str) -> Dsn:
    """The parts of ``dsn``; :class:`DsnError` when pgwake refuses it (see the module
    docstring)."""
    scheme = next((s for s in SCHEMES if dsn.startswith(s)), None)
    if scheme is None:
        raise DsnError("the DSN must be a libpq URL starting with postgresql:// or postgres://")
    if any(char.isspace() or not char.isprintable() for char in dsn):
        raise DsnError(
            "the DSN holds a space or a control character; percent-encode it (a space is %20)"
        )
    if "#" in dsn:
        raise DsnError(
            "the DSN holds '#', which starts a fragment that would be dropped; in a "
            "password (or any other part) write it as %23"
        )
    rest = dsn[len(scheme) :]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        raise DsnError(
            "the DSN holds '@' after its host part: a '/' or '?' in the password (or "
            "user name) must be percent-encoded as %2F or %3F, and an '@' elsewhere as %40"
        )
    if authority.count("@") > 1:
        raise DsnError("the DSN's user name or password holds '@'; write it as %40")
    userinfo, at, hostlist = authority.rpartition("@")
    user = password = None
    if at:
        _check_userinfo(userinfo)
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    specs = hostlist.split(",") if hostlist else []
    if len(specs) > 1 and not all(specs):
        raise DsnError("the DSN's host list has an empty entry (two commas in a row?)")
    hosts = tuple(_host(spec, n + 1 if len(specs) > 1 else 0) for n, spec in enumerate(specs))
    path, _, query_text = tail.partition("?")
    try:
        query = tuple(parse_qsl(query_text, keep_blank_values=True, strict_parsing=True))
    except ValueError:
        if query_text:
            raise DsnError(
                "the DSN's query (after '?') is not key=value pairs joined by '&'; "
                "percent-encode '&', '=' and '%' inside values"
            ) from None
        query = ()
    for key, value in query:
        if key == "port":
            for part in value.split(","):
                _port(part, "query")
    return Dsn(
        user=user,
        password=password,
        hosts=hosts,
        database=unquote(path.lstrip("/")),
        query=query,
    )


def check_dsn(dsn: str) -> str:
    """``dsn`` when :func:`parse_dsn` accepts it; else :class:`DsnError`."""
    parse_dsn(dsn)
    return dsn


# A libpq URL's scheme, user and password inside a longer text (any case). The password
# runs to the last '@' before a space: one that holds an unencoded '@', '/', '?' or '#'
# (refused by parse_dsn, but possibly in an error message) is found whole.
URL_IN_TEXT = re.compile(
    r"(?P<scheme>postgres(?:ql)?://)(?P<user>[^:@/\s]*):(?P<password>[^\s]*)@", re.IGNORECASE
)
# The shortest piece of a malformed password that dsn_passwords reports on its own.
MIN_PIECE = 4
_QUERY_PASSWORD = re.compile(r"(?:^|[?&])password=([^&]*)", re.IGNORECASE)


def dsn_passwords(dsn: str) -> set[str]:
    """Every string that may be ``dsn``'s password (raw and percent-decoded), also when
    the DSN is malformed; never raises. For masking, not for connecting."""
    found: set[str] = set()
    scheme_end = dsn.find("://")
    rest = dsn[scheme_end + 3 :] if scheme_end >= 0 else dsn
    readings: list[str] = []
    # As asyncpg reads it: the authority ends at the first '/', '?' or '#'...
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        readings.append(authority.rpartition("@")[0])
        readings.append(authority.partition("@")[0])
    # ...and as a person meant it: everything up to the last '@' is user and password.
    if "@" in rest:
        readings.append(rest.rpartition("@")[0])
    for userinfo in readings:
        _user, colon, password = userinfo.partition(":")
        if not colon:
            continue
        found.add(password)
        # The pieces a malformed password falls into ('#', '/', '?' and '@' cut it),
        # but not the short ones, which would mask ordinary words.
        found.update(p for p in re.split(r"[#/?@]", password) if len(p) >= MIN_PIECE)
    query_values: set[str] = set()
    for match in _QUERY_PASSWORD.finditer(rest.partition("?")[2]):
        query_values.add(match.group(1))
        query_values.update(p for p in re.split(r"[#&]", match.group(1)) if len(p) >= MIN_PIECE)
    found |= {unquote(value) for value in found}
    # A query value is read with '+' as a space (as asyncpg's parse_qs reads it).
    found |= query_values | {unquote_plus(value) for value in query_values}
    found.discard("")
    return found
