"""``pgwake tenants`` and ``pgwake keys`` as a person uses them."""

from __future__ import annotations

import json

import asyncpg
import pytest

from listener.crypto import generate_key, load_keyring
from tests.support.cli import pgwake

DSN_SECRET = "postgresql://shop:s3cret-pw@shop-db.internal:5432/shop_acme"


@pytest.fixture
def keys() -> dict[str, str]:
    return {"PGWAKE_ENCRYPTION_KEYS": generate_key("k1")}


async def test_add_list_show_set_remove(
    dsn: str, conn: asyncpg.Connection, keys: dict[str, str]
) -> None:
    added = pgwake(
        "tenants",
        "add",
        "acme",
        "--max-concurrency",
        "2",
        "--weight",
        "3",
        "--database",
        dsn=dsn,
        env=keys,
        stdin=DSN_SECRET + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "s3cret" not in added.stdout + added.stderr
    row = await conn.fetchrow("SELECT * FROM pgwake.tenants WHERE tenant_id = 'acme'")
    assert (row["max_concurrency"], row["weight"], row["paused"]) == (2, 3, False)
    stored = row["db_dsn_encrypted"]
    assert stored.startswith("pgwake:v1:k1:")
    for fragment in ("s3cret", "shop-db", "shop_acme", "postgresql"):
        assert fragment not in stored
    keyring = load_keyring(keys)
    assert keyring is not None
    assert keyring.decrypt("acme", stored) == DSN_SECRET

    again = pgwake("tenants", "add", "acme", dsn=dsn, env=keys)
    assert again.returncode == 1
    assert "exists already" in again.stderr

    await conn.execute("INSERT INTO pgwake.jobs (tenant_id, kind) VALUES ('acme', 'noop')")
    listed = pgwake("tenants", "list", "--json", dsn=dsn)
    assert listed.returncode == 0, listed.stderr
    (item,) = json.loads(listed.stdout)
    assert (item["tenant_id"], item["has_database"], item["database_key"], item["queued"]) == (
        "acme",
        True,
        "k1",
        1,
    )
    table = pgwake("tenants", "list", dsn=dsn)
    assert table.stdout.splitlines()[0].split()[:3] == ["TENANT", "CAP", "WEIGHT"]
    assert table.stdout.splitlines()[1].split() == ["acme", "2", "3", "-", "no", "yes", "1", "0"]

    shown = pgwake("tenants", "show", "acme", "--json", dsn=dsn)
    assert json.loads(shown.stdout)["max_concurrency"] == 2
    assert "s3cret" not in shown.stdout
    assert "pgwake:v1" not in shown.stdout

    changed = pgwake("tenants", "set", "acme", "--no-max-concurrency", "--no-database", dsn=dsn)
    assert changed.returncode == 0, changed.stderr
    row = await conn.fetchrow("SELECT * FROM pgwake.tenants WHERE tenant_id = 'acme'")
    assert (row["max_concurrency"], row["weight"], row["db_dsn_encrypted"]) == (None, 3, None)

    refused = pgwake("tenants", "remove", "acme", dsn=dsn)
    assert refused.returncode == 2
    assert "add --yes" in refused.stderr
    removed = pgwake("tenants", "remove", "acme", "--yes", dsn=dsn)
    assert removed.returncode == 0, removed.stderr
    assert await conn.fetchval("SELECT count(*) FROM pgwake.tenants") == 0
    assert await conn.fetchval("SELECT count(*) FROM pgwake.jobs") == 1


async def test_pause_and_resume(dsn: str, conn: asyncpg.Connection) -> None:
    paused = pgwake("tenants", "pause", "newco", dsn=dsn)
    assert paused.returncode == 0, paused.stderr
    assert await conn.fetchval("SELECT paused FROM pgwake.tenants WHERE tenant_id='newco'")
    resumed = pgwake("tenants", "resume", "newco", "--json", dsn=dsn)
    assert json.loads(resumed.stdout) == {"resumed": "newco"}
    assert not await conn.fetchval("SELECT paused FROM pgwake.tenants WHERE tenant_id='newco'")


async def test_rotate_key(dsn: str, conn: asyncpg.Connection) -> None:
    old = {"PGWAKE_ENCRYPTION_KEYS": generate_key("old")}
    for tenant in ("a", "b"):
        done = pgwake(
            "tenants",
            "add",
            tenant,
            "--database",
            dsn=dsn,
            env=old,
            stdin=f"postgresql://u:pw@h/{tenant}\n",
        )
        assert done.returncode == 0, done.stderr
    both = {"PGWAKE_ENCRYPTION_KEYS": generate_key("new") + "," + old["PGWAKE_ENCRYPTION_KEYS"]}
    rotated = pgwake("tenants", "rotate-key", "--json", dsn=dsn, env=both)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["rotated"] == 2
    again = pgwake("tenants", "rotate-key", "--json", dsn=dsn, env=both)
    assert json.loads(again.stdout)["already_current"] == 2
    new_only = load_keyring(
        {"PGWAKE_ENCRYPTION_KEYS": both["PGWAKE_ENCRYPTION_KEYS"].split(",")[0]}
    )
    assert new_only is not None
    for tenant in ("a", "b"):
        stored = await conn.fetchval(
            "SELECT db_dsn_encrypted FROM pgwake.tenants WHERE tenant_id = $1", tenant
        )
        assert stored.startswith("pgwake:v1:new:")
        assert new_only.decrypt(tenant, stored) == f"postgresql://u:pw@h/{tenant}"
    # A key with the right id but other material is caught too, not counted as current.
    same_id = pgwake(
        "tenants", "rotate-key", dsn=dsn, env={"PGWAKE_ENCRYPTION_KEYS": generate_key("new")}
    )
    assert same_id.returncode == 1
    assert "cannot decrypt the database DSN of tenant 'a'" in same_id.stderr
    wrong = pgwake(
        "tenants", "rotate-key", dsn=dsn, env={"PGWAKE_ENCRYPTION_KEYS": generate_key("other")}
    )
    assert wrong.returncode == 1
    assert "cannot decrypt the database DSN of tenant 'a'" in wrong.stderr
    assert "Traceback" not in wrong.stderr


@pytest.mark.parametrize(
    ("args", "env", "stdin", "code", "message"),
    [
        (
            ["tenants", "add", "x", "--database"],
            {},
            "postgresql://h/x\n",
            3,
            "no encryption key configured",
        ),
        (["tenants", "add", "x", "--database"], None, "mysql://h/x\n", 2, "must be a libpq URL"),
        (["tenants", "add", "x", "--weight", "0"], None, "", 2, "--weight"),
        (["tenants", "add", "x", "--max-concurrency", "-1"], None, "", 2, "--max-concurrency"),
        (["tenants", "set", "x"], None, "", 2, "nothing to change"),
        (["tenants", "set", "ghost", "--weight", "2"], None, "", 1, "no tenant 'ghost'"),
        (
            ["tenants", "set", "x", "--max-concurrency", "1", "--no-max-concurrency"],
            None,
            "",
            2,
            "exclude each other",
        ),
        (["tenants", "show", "ghost"], None, "", 1, "no tenant 'ghost'"),
        (["tenants", "remove", "ghost", "--yes"], None, "", 1, "no tenant 'ghost'"),
        (["tenants", "add"], None, "", 2, "Missing argument"),
        (["keys", "generate", "--id", "bad id!"], None, "", 2, "--id must be"),
    ],
)
async def test_bad_tenant_commands(
    dsn: str,
    conn: asyncpg.Connection,
    keys: dict[str, str],
    args: list[str],
    env: dict[str, str] | None,
    stdin: str,
    code: int,
    message: str,
) -> None:
    done = pgwake(*args, dsn=dsn, env=keys if env is None else env, stdin=stdin)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert message in done.stderr + done.stdout
    assert await conn.fetchval("SELECT count(*) FROM pgwake.tenants") == 0
