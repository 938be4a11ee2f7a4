"""The suite-wide check that no secret reaches a log: every DSN password and every
encryption key the tests use is looked for in every log the tests produce.

What it collects (``install()`` hooks it in; tests/conftest.py calls it at import):

- secrets: the password of every DSN given to ``asyncpg.connect``/``create_pool`` in the
  test process or found in the environment or argv of a subprocess; the material of
  every encryption ``Key`` built in the test process, and of every key in
  ``PGWAKE_ENCRYPTION_KEYS``, a ``PGWAKE_ENCRYPTION_KEY_FILE`` or a ``pgwake-keys``
  credential given to a subprocess or set in the test process's environment;
- logs: the output of every subprocess whose output a test reads (``communicate``,
  which ``stop_process`` and ``subprocess.run`` use), log files registered with
  :meth:`SecretWatch.add_log_file` (workers writing to a file, private servers), and
  pytest's captured stdout, stderr and log records of every test.

What counts as a leak, in any log: a secret, raw or JSON-escaped (keys also in standard
base64 and hex); a libpq URL with a password other than ``***``; a ``password=`` with a
value other than ``***``. The report names the log, the line and where the secret came
from, never the secret.

Independent of the product: it does not use listener/redact.py, so a secret the product
forgot to mask is still caught.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg

from listener import crypto

MIN_SECRET = 6
_URL = re.compile(r"postgres(?:ql)?://[^:@/\s]*:(?P<pw>[^@\s]*)@", re.IGNORECASE)
_KV = re.compile(r"password\s*=\s*(?P<pw>'(?:[^'\\]|\\.)*'?|[^\s,;&\"}]+)", re.IGNORECASE)
_KEY_ENTRY = re.compile(r"(?P<id>[A-Za-z0-9_-]{1,32}):(?P<material>[A-Za-z0-9_=-]{16,})")
MASK = "***"


@dataclass(frozen=True)
class Leak:
    """One secret (or unmasked password) found in one line of one log."""

    log: str
    line: int
    what: str  # "a secret", "a libpq URL with its password" or "a password= value"
    origin: str | None  # where the secret came from (for "a secret")
    excerpt: str  # the line with every known secret masked

    def __str__(self) -> str:
        origin = f" from {self.origin}" if self.origin else ""
        return f"{self.log}, line {self.line}: {self.what}{origin}\n    {self.excerpt}"


@dataclass
class SecretWatch:
    """Secrets and logs of a test session (or of one test that checks the watch)."""

    secrets: dict[str, str] = field(default_factory=dict)  # secret -> where it came from
    logs: list[tuple[str, str]] = field(default_factory=list)  # (log name, text)
    files: dict[Path, tuple[str, int]] = field(default_factory=dict)  # path -> (name, read)

    # --- secrets -----------------------------------------------------------------

    def add_secret(self, secret: str, origin: str) -> None:
        """Look for ``secret`` in every log (ignored when shorter than MIN_SECRET)."""
        if len(secret) >= MIN_SECRET:
            self.secrets.setdefault(secret, origin)

    def add_key_material(self, material: bytes, origin: str) -> None:
        """An encryption key: its base64url (as pgwake writes keys), base64 and hex."""
        self.add_secret(base64.urlsafe_b64encode(material).rstrip(b"=").decode(), origin)
        self.add_secret(base64.b64encode(material).rstrip(b"=").decode(), origin)
        self.add_secret(material.hex(), origin)

    def add_password(self, password: str, origin: str) -> None:
        """A password, also percent-decoded."""
        self.add_secret(password, origin)
        self.add_secret(unquote(password), origin)

    def harvest_dsns(self, text: str, origin: str) -> None:
        """The passwords of every libpq URL and ``password=`` in ``text``."""
        for match in _URL.finditer(text):
            if match["pw"] != MASK:
                self.add_password(match["pw"], origin)
        for match in _KV.finditer(text):
            if match["pw"].strip("'") != MASK:
                self.add_password(match["pw"].strip("'"), origin)

    def harvest_keys(self, text: str, origin: str) -> None:
        """Every ``<key_id>:<material>`` entry of key text (valid or not)."""
        for match in _KEY_ENTRY.finditer(text):
            encoded = match["material"].rstrip("=")
            self.add_secret(encoded, origin)
            with contextlib.suppress(binascii.Error, ValueError):
                material = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
                if len(material) >= 16:
                    self.add_key_material(material, origin)

    def harvest_env(self, env: Mapping[str, str], origin: str) -> None:
        """DSN passwords in any variable, and the keys pgwake would read from ``env``."""
        for name, value in env.items():
            self.harvest_dsns(value, f"{origin}: {name}")
            if name == "PGPASSWORD":
                self.add_password(value, f"{origin}: {name}")
        if env.get(crypto.KEYS_ENV):
            self.harvest_keys(env[crypto.KEYS_ENV], f"{origin}: {crypto.KEYS_ENV}")
        paths = []
        if env.get(crypto.KEY_FILE_ENV):
            paths.append((Path(env[crypto.KEY_FILE_ENV]), crypto.KEY_FILE_ENV))
        if env.get(crypto.CREDENTIALS_DIR_ENV):
            credential = Path(env[crypto.CREDENTIALS_DIR_ENV]) / crypto.CREDENTIAL_NAME
            paths.append((credential, crypto.CREDENTIAL_NAME))
        for path, what in paths:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                self.harvest_keys(path.read_text(encoding="utf-8"), f"{origin}: {what}")

    # --- logs ----------------------------------------------------------------------

    def add_log(self, name: str, text: str | bytes | None) -> None:
        """Check ``text`` as a log called ``name``."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if text:
            self.logs.append((name, text))

    def add_log_file(self, path: Path, name: str) -> None:
        """Check the file at ``path`` (read by :meth:`read_files`, from where it was
        last read, so a file that grows is read once)."""
        self.files.setdefault(path, (name, 0))

    def read_files(self) -> None:
        """Read what the registered files hold now (call before they are deleted)."""
        for path, (name, offset) in list(self.files.items()):
            try:
                with path.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            self.files[path] = (name, offset + len(data))
            self.add_log(name, data)

    # --- the check -------------------------------------------------------------------

    def _variants(self) -> list[tuple[str, str]]:
        found: dict[str, str] = {}
        for secret, origin in self.secrets.items():
            found.setdefault(secret, origin)
            found.setdefault(json.dumps(secret)[1:-1], origin)
        return sorted(found.items(), key=lambda item: len(item[0]), reverse=True)

    def mask(self, text: str) -> str:
        """``text`` with every known secret and password masked (for reports)."""
        for secret, _ in self._variants():
            text = text.replace(secret, MASK)
        text = _URL.sub(lambda m: m[0].replace(m["pw"], MASK) if m["pw"] else m[0], text)
        return _KV.sub(lambda m: m[0].replace(m["pw"], MASK), text)

    def leaks(self) -> list[Leak]:
        """Every leak in every log collected so far."""
        self.read_files()
        variants = self._variants()
        found: list[Leak] = []
        for name, text in self.logs:
            for number, line in enumerate(text.splitlines(), start=1):
                whats: list[tuple[str, str | None]] = [
                    (f"a secret ({fingerprint(secret)})", origin)
                    for secret, origin in variants
                    if secret in line
                ]
                whats += [
                    ("a libpq URL with its password", None)
                    for m in _URL.finditer(line)
                    if m["pw"] and m["pw"] != MASK
                ]
                whats += [
                    ("a password= value", None)
                    for m in _KV.finditer(line)
                    if m["pw"].strip("'") != MASK
                ]
                excerpt = self.mask(line)[:300]
                found.extend(
                    Leak(name, number, what, origin, excerpt)
                    for what, origin in dict.fromkeys(whats)
                )
        return found

    def report(self, leaks: list[Leak] | None = None) -> str:
        """A summary: what was checked and every leak (secrets masked)."""
        leaks = self.leaks() if leaks is None else leaks
        size = sum(len(text) for _, text in self.logs)
        head = (
            f"secret watch: {len(self.secrets)} secrets looked for in {len(self.logs)} logs "
            f"({size / 1e6:.1f} MB): "
        )
        if not leaks:
            return head + "no leak"
        lines = [head + f"{len(leaks)} LEAK(S)"]
        lines += [f"  {leak}" for leak in leaks]
        return "\n".join(lines)


def fingerprint(secret: str) -> str:
    """Names a secret in a report without showing it."""
    return f"{len(secret)} chars, sha256 {hashlib.sha256(secret.encode()).hexdigest()[:12]}"


# --- the session's watch, and the hooks that feed it -------------------------------

SESSION = SecretWatch()
_active: list[SecretWatch] = [SESSION]


def current() -> SecretWatch:
    """The watch collecting now (the session's, unless a test diverted it)."""
    return _active[-1]


@contextlib.contextmanager
def diverted(watch: SecretWatch) -> Iterator[SecretWatch]:
    """Collect into ``watch`` instead of the session's watch inside the block (for a
    test that leaks on purpose to prove the check catches it)."""
    _active.append(watch)
    try:
        yield watch
    finally:
        _active.remove(watch)


def describe(args: Any) -> str:
    """A short, secret-free name for a command line."""
    argv = [args] if isinstance(args, (str, os.PathLike)) else list(args)
    words = [Path(str(argv[0])).name, *(str(a) for a in argv[1:4])]
    name = " ".join(words)
    name = _URL.sub(lambda m: m[0].replace(m["pw"], MASK) if m["pw"] else m[0], name)
    return _KV.sub(lambda m: m[0].replace(m["pw"], MASK), name)


_installed = False


def install() -> None:
    """Hook the watch into subprocess, asyncpg and the key class (once)."""
    global _installed  # noqa: PLW0603 - installed once per test process
    if _installed:
        return
    _installed = True

    popen_init = subprocess.Popen.__init__
    communicate = subprocess.Popen.communicate

    def watched_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        popen_init(self, args, *rest, **kwargs)
        watch, name = current(), f"output of `{describe(args)}` (pid {self.pid})"
        env = kwargs.get("env")
        watch.harvest_env(os.environ if env is None else env, f"environment of {name}")
        argv = [args] if isinstance(args, (str, os.PathLike)) else list(args)
        watch.harvest_dsns(" ".join(str(a) for a in argv), f"argv of {name}")
        self._secret_watch = (watch, name)  # type: ignore[attr-defined]

    def watched_communicate(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        out, err = communicate(self, *args, **kwargs)
        watch, name = getattr(self, "_secret_watch", (current(), "output of a subprocess"))
        watch.add_log(name, out)
        watch.add_log(f"{name}, stderr", err)
        return out, err

    subprocess.Popen.__init__ = watched_init  # type: ignore[assignment,method-assign]
    subprocess.Popen.communicate = watched_communicate  # type: ignore[method-assign]

    connect, create_pool = asyncpg.connect, asyncpg.create_pool

    def note(dsn: Any, kwargs: Mapping[str, Any], where: str) -> None:
        if isinstance(dsn, str):
            current().harvest_dsns(dsn, where)
        if isinstance(kwargs.get("password"), str):
            current().add_password(kwargs["password"], where)

    async def watched_connect(dsn: Any = None, *args: Any, **kwargs: Any) -> Any:
        note(dsn, kwargs, "a DSN given to asyncpg.connect")
        return await connect(dsn, *args, **kwargs)

    def watched_create_pool(dsn: Any = None, *args: Any, **kwargs: Any) -> Any:
        note(dsn, kwargs, "a DSN given to asyncpg.create_pool")
        return create_pool(dsn, *args, **kwargs)

    asyncpg.connect = watched_connect
    asyncpg.create_pool = watched_create_pool

    key_post_init = crypto.Key.__post_init__

    def watched_key(self: crypto.Key) -> None:
        key_post_init(self)
        current().add_key_material(self.material, "an encryption Key built in the tests")

    crypto.Key.__post_init__ = watched_key  # type: ignore[method-assign]
