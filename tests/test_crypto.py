"""Encryption of tenant DSNs: keyrings, rotation, key sources, ``pgwake keys``; no database."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from listener.cli.keys import keys_app
from listener.crypto import (
    DecryptionError,
    EncryptionKeyError,
    Key,
    Keyring,
    generate_key,
    load_keyring,
    parse_keys,
)
from listener.errors import ConfigError, PgwakeError

HOST = "db-acme.internal.example.com"
PASSWORD = "s3cr3t-Pa55word"
DSN = f"postgresql://acme_user:{PASSWORD}@{HOST}:5432/acme_prod?sslmode=require"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_key(key_id: str) -> Key:
    return Key(key_id, os.urandom(32))


def key_line(key: Key) -> str:
    return f"{key.key_id}:{b64(key.material)}"


def reseal(ciphertext: str, change: int) -> str:
    """The same ciphertext with one byte of the sealed part flipped (canonical base64)."""
    head, _, sealed = ciphertext.rpartition(":")
    data = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    data[change] ^= 0x01
    return f"{head}:{b64(bytes(data))}"


@pytest.fixture
def ring() -> Keyring:
    return Keyring([make_key("k1")])


def test_round_trip(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN)
    assert ring.decrypt("acme", ciphertext) == DSN
    assert ring.decrypt("acme", ring.encrypt("acme", "")) == ""
    unicode_dsn = "postgresql://ü:pâss@hôst/db"
    assert ring.decrypt("acme", ring.encrypt("acme", unicode_dsn)) == unicode_dsn


def test_ciphertext_format_and_no_plaintext(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN)
    prefix, version, key_id, nonce, sealed = ciphertext.split(":")
    assert (prefix, version, key_id) == ("pgwake", "v1", "k1")
    assert "=" not in ciphertext
    assert len(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))) == 12
    assert len(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))) == len(DSN) + 16
    body = f"{nonce}:{sealed}"
    for secret in (HOST, PASSWORD, DSN):
        for size in range(4, len(secret) + 1):
            for start in range(len(secret) - size + 1):
                assert secret[start : start + size] not in body


def test_two_encryptions_differ(ring: Keyring) -> None:
    first, second = ring.encrypt("acme", DSN), ring.encrypt("acme", DSN)
    assert first != second
    assert first.split(":")[3] != second.split(":")[3]  # fresh nonce
    assert ring.decrypt("acme", first) == ring.decrypt("acme", second) == DSN


def test_ciphertext_is_bound_to_its_tenant(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt("globex", ciphertext)
    message = str(info.value)
    assert "tenant 'globex'" in message
    assert "does not match" in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__  # InvalidTag does not show in a traceback


def test_tampered_ciphertext_fails(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN)
    for index in (0, 5, -1):  # the first, a middle and the last (tag) byte
        with pytest.raises(DecryptionError, match="altered"):
            ring.decrypt("acme", reseal(ciphertext, index))
    head, _, sealed = ciphertext.rpartition(":")
    swapped = "A" if sealed[10] != "A" else "B"
    with pytest.raises(DecryptionError, match="tenant 'acme'"):
        ring.decrypt("acme", f"{head}:{sealed[:10]}{swapped}{sealed[11:]}")
    nonce_changed = ciphertext.split(":")
    nonce_changed[3] = b64(os.urandom(12))
    with pytest.raises(DecryptionError, match="altered"):
        ring.decrypt("acme", ":".join(nonce_changed))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        DSN,
        "pgwake:v1:k1",
        "pgwake:v1:k1:abc",
        "pgwake:v1:k1:!!!!:AAAA",
        "pgwake:v1:bad id:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA",
        "pgwake:v1:k1:AAAA:AAAAAAAAAAAAAAAAAAAAAA",  # nonce too short
        "pgwake:v1:k1:AAAAAAAAAAAAAAAA:AAAA",  # shorter than a tag
        "pgwake:v1:k1:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAA==",  # padding is not written
        "pgwake:v1:k1:AAAAAAAAAAAAAAAA:AAAAAAAAAAAAAAAAAAAAAB",  # non-canonical base64
    ],
)
def test_not_a_ciphertext(ring: Keyring, bad: str) -> None:
    with pytest.raises(DecryptionError, match="tenant 'acme': not a pgwake ciphertext") as info:
        ring.decrypt("acme", bad)
    if bad:
        assert bad not in str(info.value)


def test_unknown_format_version(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN).replace(":v1:", ":v2:")
    with pytest.raises(DecryptionError, match="format 'v2' is not supported"):
        ring.decrypt("acme", ciphertext)


def test_wrong_key_with_the_same_id(ring: Keyring) -> None:
    ciphertext = ring.encrypt("acme", DSN)
    other = Keyring([make_key("k1")])
    with pytest.raises(DecryptionError) as info:
        other.decrypt("acme", ciphertext)
    message = str(info.value)
    assert message.startswith("cannot decrypt the database DSN of tenant 'acme': ")
    assert "key 'k1' does not match" in message
    for secret in (ciphertext, ciphertext.split(":")[4], DSN, PASSWORD, HOST):
        assert secret not in message


def test_unknown_key_id(ring: Keyring) -> None:
    ciphertext = Keyring([make_key("other-key")]).encrypt("acme", DSN)
    with pytest.raises(DecryptionError) as info:
        ring.decrypt("acme", ciphertext)
    assert str(info.value) == (
        "cannot decrypt the database DSN of tenant 'acme': it was encrypted with key "
        "'other-key', which is not configured"
    )


def test_rotation() -> None:
    old, new = make_key("k1"), make_key("k2")
    before = Keyring([old])
    old_ciphertext = before.encrypt("acme", DSN)
    assert not before.needs_rotation(old_ciphertext)

    during = Keyring([new, old])
    assert during.primary_id == "k2"
    assert during.key_ids == ("k2", "k1")
    new_ciphertext = during.encrypt("acme", DSN)
    assert new_ciphertext.split(":")[2] == "k2"
    assert during.decrypt("acme", old_ciphertext) == DSN
    assert during.decrypt("acme", new_ciphertext) == DSN
    assert during.needs_rotation(old_ciphertext)
    assert not during.needs_rotation(new_ciphertext)
    rotated = during.encrypt("acme", during.decrypt("acme", old_ciphertext))
    assert not during.needs_rotation(rotated)

    after = Keyring([new])
    assert after.decrypt("acme", new_ciphertext) == DSN
    assert after.decrypt("acme", rotated) == DSN
    with pytest.raises(DecryptionError, match="encrypted with key 'k1', which is not configured"):
        after.decrypt("acme", old_ciphertext)


def test_needs_rotation_for_values_that_are_not_ciphertexts(ring: Keyring) -> None:
    assert ring.needs_rotation(DSN)
    assert ring.needs_rotation("")
    assert ring.needs_rotation("pgwake:v1:k1:garbage")


def test_keys_and_keyrings_hide_material() -> None:
    key = make_key("k1")
    ring = Keyring([key])
    for text in (repr(key), str(key), repr(ring)):
        assert b64(key.material) not in text
        assert repr(key.material) not in text
    assert "k1" in repr(ring)


def test_keyring_construction_errors() -> None:
    with pytest.raises(EncryptionKeyError, match="at least one key"):
        Keyring([])
    with pytest.raises(EncryptionKeyError, match="'k1' appears more than once"):
        Keyring([make_key("k1"), make_key("k1")])
    with pytest.raises(EncryptionKeyError, match="invalid key id"):
        Key("no spaces", os.urandom(32))
    with pytest.raises(EncryptionKeyError, match="invalid key id"):
        Key("x" * 33, os.urandom(32))
    with pytest.raises(EncryptionKeyError, match="not 32 bytes"):
        Key("k1", os.urandom(16))


def test_error_classes() -> None:
    assert issubclass(EncryptionKeyError, ConfigError)
    assert EncryptionKeyError.exit_code == ConfigError.exit_code
    assert issubclass(DecryptionError, PgwakeError)
    assert not issubclass(DecryptionError, ConfigError)


def test_generate_key() -> None:
    line = generate_key("k7")
    key_id, _, encoded = line.partition(":")
    assert key_id == "k7"
    assert len(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))) == 32
    assert generate_key("k7") != line
    ring = parse_keys(line, "test")
    assert ring.primary_id == "k7"
    with pytest.raises(EncryptionKeyError, match="invalid key id"):
        generate_key("bad:id")


# Key sources


def test_load_keyring_none_without_a_source(tmp_path: Path) -> None:
    assert load_keyring({}) is None
    assert load_keyring({"PGWAKE_ENCRYPTION_KEYS": "", "PGWAKE_ENCRYPTION_KEY_FILE": ""}) is None
    # A credentials directory without our credential: other services' credentials only.
    assert load_keyring({"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None


def test_load_keyring_from_env() -> None:
    k1, k2 = make_key("k1"), make_key("k2")
    ring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": f"{key_line(k2)},{key_line(k1)}"})
    assert ring is not None
    assert ring.key_ids == ("k2", "k1")
    assert ring.decrypt("acme", Keyring([k1]).encrypt("acme", DSN)) == DSN
    assert Keyring([k2]).decrypt("acme", ring.encrypt("acme", DSN)) == DSN


def test_load_keyring_from_file(tmp_path: Path) -> None:
    k1, k2 = make_key("k1"), make_key("k2")
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2025-01-01\n{key_line(k2)}\n\n  {key_line(k1)}  \n")
    ring = load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(path)})
    assert ring is not None
    assert ring.key_ids == ("k2", "k1")
    assert ring.decrypt("acme", Keyring([k1]).encrypt("acme", DSN)) == DSN


def test_load_keyring_from_systemd_credential(tmp_path: Path) -> None:
    key = make_key("cred")
    (tmp_path / "pgwake-keys").write_text(key_line(key) + "\n")
    ring = load_keyring({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert ring is not None
    assert ring.key_ids == ("cred",)


def test_load_keyring_precedence(tmp_path: Path) -> None:
    env_key, file_key, cred_key = make_key("env"), make_key("file"), make_key("cred")
    path = tmp_path / "keys"
    path.write_text(key_line(file_key))
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "pgwake-keys").write_text(key_line(cred_key))
    env = {
        "PGWAKE_ENCRYPTION_KEYS": key_line(env_key),
        "PGWAKE_ENCRYPTION_KEY_FILE": str(path),
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    first = load_keyring(env)
    assert first is not None
    assert first.key_ids == ("env",)
    del env["PGWAKE_ENCRYPTION_KEYS"]
    second = load_keyring(env)
    assert second is not None
    assert second.key_ids == ("file",)
    del env["PGWAKE_ENCRYPTION_KEY_FILE"]
    third = load_keyring(env)
    assert third is not None
    assert third.key_ids == ("cred",)
    # The first source set wins even when it is bad: no silent fall-back to another source.
    env["PGWAKE_ENCRYPTION_KEY_FILE"] = str(tmp_path / "missing")
    with pytest.raises(EncryptionKeyError, match="PGWAKE_ENCRYPTION_KEY_FILE"):
        load_keyring(env)


GOOD = b64(b"\x01" * 32)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"k1:{GOOD},k2:{GOOD[:-2]}", "PGWAKE_ENCRYPTION_KEYS: key 2 ('k2') is not 32 bytes"),
        (f"k1:{GOOD},k2:{b64(b'x' * 48)}", "key 2 ('k2') is not 32 bytes of base64url"),
        (f"k1:{GOOD[:-1]}!", "key 1 ('k1') is not 32 bytes of base64url"),
        (f"k1:{GOOD.replace('A', '+')}", "key 1 ('k1') is not 32 bytes of base64url"),
        (f"k1:{GOOD}:extra", "key 1 ('k1') is not 32 bytes of base64url"),
        (f"k1:{GOOD}\nk1:{b64(b'2' * 32)}", "key 2 repeats the id 'k1' of key 1"),
        (GOOD, "key 1 is not of the form <key_id>:<base64url of 32 bytes>"),
        (f"bad id:{GOOD}", "key 1 has an invalid id"),
        (f"{'x' * 33}:{GOOD}", "key 1 has an invalid id"),
        (" , \n ,", "PGWAKE_ENCRYPTION_KEYS: no keys found"),
        ("# only a comment\n", "PGWAKE_ENCRYPTION_KEYS: no keys found"),
    ],
)
def test_bad_key_text(text: str, expected: str) -> None:
    with pytest.raises(EncryptionKeyError) as info:
        load_keyring({"PGWAKE_ENCRYPTION_KEYS": text})
    message = str(info.value)
    assert expected in message
    assert message.startswith("PGWAKE_ENCRYPTION_KEYS: ")
    for part in text.replace("\n", ",").replace(":", ",").split(","):
        if len(part.strip()) > 8:  # key material (ids are short and may be named)
            assert part.strip() not in message
    assert GOOD not in message
    assert GOOD[:-2] not in message


def test_padded_key_is_accepted() -> None:
    padded = base64.urlsafe_b64encode(b"\x02" * 32).decode("ascii")
    assert padded.endswith("=")
    ring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": f"k1:{padded}"})
    assert ring is not None
    assert ring.primary_id == "k1"


def test_bad_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(EncryptionKeyError) as info:
        load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(missing)})
    assert str(info.value).startswith("PGWAKE_ENCRYPTION_KEY_FILE: cannot read ")
    assert str(missing) in str(info.value)

    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(EncryptionKeyError, match=r"PGWAKE_ENCRYPTION_KEY_FILE \(.*\): no keys"):
        load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(empty)})

    short = tmp_path / "short"
    material = b64(b"\x03" * 31)
    short.write_text(f"k1:{material}\n")
    with pytest.raises(EncryptionKeyError, match="key 1 \\('k1'\\) is not 32 bytes") as info:
        load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(short)})
    assert material not in str(info.value)

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + os.urandom(32))
    with pytest.raises(EncryptionKeyError, match="is not UTF-8 text"):
        load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(binary)})

    with pytest.raises(EncryptionKeyError, match="cannot read"):
        load_keyring({"PGWAKE_ENCRYPTION_KEY_FILE": str(tmp_path)})  # a directory


def test_bad_systemd_credential(tmp_path: Path) -> None:
    material = b64(b"\x04" * 16)
    (tmp_path / "pgwake-keys").write_text(f"k1:{material}")
    with pytest.raises(EncryptionKeyError) as info:
        load_keyring({"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(info.value).startswith("systemd credential pgwake-keys (")
    assert material not in str(info.value)


# pgwake keys


def test_keys_generate_cli() -> None:
    result = CliRunner().invoke(keys_app, ["generate"])
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "\n" not in line
    assert line.startswith("k1:")
    ring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": line})
    assert ring is not None
    assert ring.primary_id == "k1"
    assert "PGWAKE_ENCRYPTION_KEYS" in result.stderr
    assert "PGWAKE_ENCRYPTION_KEY_FILE" in result.stderr
    assert "LoadCredential=pgwake-keys:/etc/pgwake/keys" in result.stderr
    assert "FIRST" in result.stderr
    assert line not in result.stderr


def test_keys_generate_cli_with_id() -> None:
    result = CliRunner().invoke(keys_app, ["generate", "--id", "2025-06_b"])
    assert result.exit_code == 0, result.output
    ring = load_keyring({"PGWAKE_ENCRYPTION_KEYS": result.stdout})
    assert ring is not None
    assert ring.primary_id == "2025-06_b"


@pytest.mark.parametrize("bad", ["", "has space", "k:1", "x" * 33])
def test_keys_generate_cli_bad_id(bad: str) -> None:
    result = CliRunner().invoke(keys_app, ["generate", "--id", bad])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("pgwake: error: --id must be 1 to 32 characters")
    assert result.stderr.count("\n") == 1


def test_keys_app_without_arguments_shows_help() -> None:
    result = CliRunner().invoke(keys_app, [])
    assert "generate" in result.output
    assert result.exit_code in (0, 2)  # click's no_args_is_help exit code varies by version
