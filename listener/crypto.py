"""Encryption of tenant database DSNs at rest (AES-256-GCM), and the keys that do it.

Ciphertext text (stored in a text column)::

    pgwake:v1:<key_id>:<base64url nonce>:<base64url ciphertext+tag>

Key text (configuration), one or more separated by commas or newlines, first = primary::

    <key_id>:<base64url of 32 bytes>

Invariants:
- Every encryption uses a fresh 12-byte random nonce and the keyring's primary (first)
  key; decryption accepts any configured key, chosen by the key id in the ciphertext.
- The tenant id is the associated data: a ciphertext copied to another tenant's row does
  not decrypt.
- Base64url is written without padding and read back only in its canonical form, so any
  change to a stored ciphertext is either rejected as malformed or fails authentication.
- cryptography is imported when a DSN is first encrypted or decrypted, not before (a
  worker with keys configured but no tenant database never needs it).
- No message, ``repr`` or traceback shows key material, plaintext or ciphertext: errors
  name the source, the key id (only once it is known to be a valid id), the tenant and
  the reason; ``cryptography``'s ``InvalidTag`` never escapes (raised ``from None``).
  Every key a keyring holds is registered with listener/redact.py, so its material is
  masked in whatever the process logs, even in text pgwake did not write.
- Key sources, first set wins: ``PGWAKE_ENCRYPTION_KEYS`` (the key text),
  ``PGWAKE_ENCRYPTION_KEY_FILE`` (a file holding it), then the systemd credential
  ``pgwake-keys`` in ``$CREDENTIALS_DIRECTORY``. An empty variable counts as unset, as in
  :mod:`listener.config`; a set source that holds no key is an error.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from listener.errors import ConfigError, PgwakeError
from listener.redact import register_key_material

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS_ENV = "PGWAKE_ENCRYPTION_KEYS"
KEY_FILE_ENV = "PGWAKE_ENCRYPTION_KEY_FILE"
CREDENTIALS_DIR_ENV = "CREDENTIALS_DIRECTORY"
CREDENTIAL_NAME = "pgwake-keys"
# What to tell a person who has no key configured.
NO_KEY_HINT = (
    f"set {KEYS_ENV}, {KEY_FILE_ENV} or the systemd credential {CREDENTIAL_NAME} "
    "(create a key with `pgwake keys generate`)"
)

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
PREFIX = "pgwake"
VERSION = "v1"

KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
KEY_ID_RULE = "1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'"
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_VERSION_TOKEN = re.compile(r"v[0-9]{1,4}")
_KEY_FORMAT = "<key_id>:<base64url of 32 bytes>"


class EncryptionKeyError(ConfigError):
    """Bad encryption key configuration (format, length, duplicate ids, unreadable file).

    The message names the source and the problem, never the key material."""


class DecryptionError(PgwakeError):
    """A stored DSN cannot be decrypted; the message names the tenant and the reason."""


def is_valid_key_id(key_id: str) -> bool:
    """True when ``key_id`` is a short name usable in key and ciphertext text."""
    return KEY_ID_PATTERN.fullmatch(key_id) is not None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, *, allow_padding: bool) -> bytes | None:
    """Decode canonical base64url, or None when ``text`` is anything else."""
    if allow_padding:
        text = text.removesuffix("==").removesuffix("=")
    if _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    # Non-zero trailing bits decode to the same bytes; only the canonical text is accepted.
    return data if _b64encode(data) == text else None


@dataclass(frozen=True)
class Key:
    """One AES-256 key and its id; the material never appears in ``repr``."""

    key_id: str
    material: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not is_valid_key_id(self.key_id):
            raise EncryptionKeyError(f"invalid key id: expected {KEY_ID_RULE}")
        if len(self.material) != KEY_BYTES:
            raise EncryptionKeyError(f"key {self.key_id!r} is not {KEY_BYTES} bytes")


@dataclass(frozen=True)
class _Parsed:
    key_id: str
    nonce: bytes
    sealed: bytes


def _parse(ciphertext: str) -> _Parsed | str:
    """The parts of a ciphertext, or the reason it is not one we can read."""
    parts = ciphertext.strip().split(":")
    if len(parts) < 2 or parts[0] != PREFIX:
        return "not a pgwake ciphertext"
    if parts[1] != VERSION:
        if _VERSION_TOKEN.fullmatch(parts[1]):
            return f"ciphertext format {parts[1]!r} is not supported by this pgwake"
        return "not a pgwake ciphertext"
    if len(parts) != 5 or not is_valid_key_id(parts[2]):
        return "not a pgwake ciphertext"
    nonce = _b64decode(parts[3], allow_padding=False)
    sealed = _b64decode(parts[4], allow_padding=False)
    if nonce is None or sealed is None or len(nonce) != NONCE_BYTES or len(sealed) < TAG_BYTES:
        return "not a pgwake ciphertext"
    return _Parsed(parts[2], nonce, sealed)


class Keyring:
    """Ordered keys: the first (primary) encrypts; any of them decrypts, chosen by id."""

    def __init__(self, keys: Iterable[Key]) -> None:
        self._keys = tuple(keys)
        if not self._keys:
            raise EncryptionKeyError("a keyring needs at least one key")
        self._material: dict[str, bytes] = {}
        # Built on first use: cryptography is imported only when a DSN is encrypted or
        # decrypted, not by every worker that has a key configured.
        self._ciphers: dict[str, AESGCM] = {}
        for key in self._keys:
            if key.key_id in self._material:
                raise EncryptionKeyError(f"the key id {key.key_id!r} appears more than once")
            self._material[key.key_id] = key.material
            # Masked in every log line and error of this process from now on.
            register_key_material(key.material)

    def _cipher(self, key_id: str) -> AESGCM:
        """The cipher of key ``key_id``, one of the keys configured."""
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

            cipher = self._ciphers[key_id] = AESGCM(self._material[key_id])
        return cipher

    def __repr__(self) -> str:
        return f"Keyring(key_ids={list(self.key_ids)!r})"

    @property
    def primary_id(self) -> str:
        """The id of the key new ciphertexts are encrypted with."""
        return self._keys[0].key_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ids of all configured keys, primary first."""
        return tuple(key.key_id for key in self._keys)

    def encrypt(self, tenant_id: str, plaintext: str) -> str:
        """Encrypt ``plaintext`` for ``tenant_id`` with the primary key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._cipher(self.primary_id).encrypt(
            nonce, plaintext.encode("utf-8"), tenant_id.encode("utf-8")
        )
        return f"{PREFIX}:{VERSION}:{self.primary_id}:{_b64encode(nonce)}:{_b64encode(sealed)}"

    def decrypt(self, tenant_id: str, ciphertext: str) -> str:
        """Decrypt a ciphertext stored for ``tenant_id``; :class:`DecryptionError` if not."""
        failure = f"cannot decrypt the database DSN of tenant {tenant_id!r}"
        parsed = _parse(ciphertext)
        if isinstance(parsed, str):
            raise DecryptionError(f"{failure}: {parsed}")
        if parsed.key_id not in self._material:
            raise DecryptionError(
                f"{failure}: it was encrypted with key {parsed.key_id!r}, which is not configured"
            )
        from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - loaded with the cipher

        try:
            data = self._cipher(parsed.key_id).decrypt(
                parsed.nonce, parsed.sealed, tenant_id.encode("utf-8")
            )
        except InvalidTag:
            raise DecryptionError(
                f"{failure}: the key {parsed.key_id!r} does not match, the ciphertext was "
                "altered, or it belongs to another tenant"
            ) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError(f"{failure}: the decrypted value is not UTF-8 text") from None

    def needs_rotation(self, ciphertext: str) -> bool:
        """True unless ``ciphertext`` is a well-formed ciphertext of the primary key.

        Does not authenticate it: a value that is malformed, or not encrypted at all,
        also needs (re-)encryption, so it counts too."""
        parsed = _parse(ciphertext)
        return isinstance(parsed, str) or parsed.key_id != self.primary_id


def generate_key(key_id: str) -> str:
    """A new random key as one line of key text: ``<key_id>:<base64url of 32 bytes>``."""
    if not is_valid_key_id(key_id):
        raise EncryptionKeyError(f"invalid key id: expected {KEY_ID_RULE}")
    return f"{key_id}:{_b64encode(os.urandom(KEY_BYTES))}"


def _entries(text: str) -> list[str]:
    entries: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        entries.extend(part.strip() for part in line.split(",") if part.strip())
    return entries


def parse_keys(text: str, source: str) -> Keyring:
    """Parse key text (first key = primary); ``source`` names where it came from in errors.

    Blank entries and lines starting with ``#`` are ignored."""
    entries = _entries(text)
    if not entries:
        raise EncryptionKeyError(f"{source}: no keys found (expected {_KEY_FORMAT})")
    keys: list[Key] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        key_id, colon, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not colon:
            raise EncryptionKeyError(f"{source}: key {number} is not of the form {_KEY_FORMAT}")
        if not is_valid_key_id(key_id):
            raise EncryptionKeyError(
                f"{source}: key {number} has an invalid id (expected {KEY_ID_RULE})"
            )
        if key_id in seen:
            raise EncryptionKeyError(
                f"{source}: key {number} repeats the id {key_id!r} of key {seen[key_id]}"
            )
        material = _b64decode(encoded.strip(), allow_padding=True)
        if material is None or len(material) != KEY_BYTES:
            raise EncryptionKeyError(
                f"{source}: key {number} ({key_id!r}) is not {KEY_BYTES} bytes of base64url "
                "(`pgwake keys generate` writes a valid key)"
            )
        seen[key_id] = number
        keys.append(Key(key_id, material))
    return Keyring(keys)


def _read(path: Path, source: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EncryptionKeyError(f"{source}: {path} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EncryptionKeyError(f"{source}: cannot read {path}: {reason}") from None


def load_keyring(env: Mapping[str, str] | None = None) -> Keyring | None:
    """The configured keyring, or None when no key source is configured.

    Sources, first set wins: ``PGWAKE_ENCRYPTION_KEYS``, ``PGWAKE_ENCRYPTION_KEY_FILE``,
    the systemd credential ``pgwake-keys`` in ``$CREDENTIALS_DIRECTORY`` (only if that
    file exists). Raises :class:`EncryptionKeyError` for a source that is set but bad."""
    env = os.environ if env is None else env
    text = env.get(KEYS_ENV)
    if text:
        return parse_keys(text, KEYS_ENV)
    key_file = env.get(KEY_FILE_ENV)
    if key_file:
        path = Path(key_file)
        return parse_keys(_read(path, KEY_FILE_ENV), f"{KEY_FILE_ENV} ({path})")
    credentials = env.get(CREDENTIALS_DIR_ENV)
    if credentials:
        path = Path(credentials) / CREDENTIAL_NAME
        if path.exists():
            source = f"systemd credential {CREDENTIAL_NAME} ({path})"
            return parse_keys(_read(path, source), source)
    return None
