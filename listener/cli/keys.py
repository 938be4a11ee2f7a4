"""``pgwake keys``: make encryption keys for tenant database DSNs.

Invariants:
- ``generate`` prints the key line, and nothing else, to stdout, so it can be redirected
  straight into a key file; the installation hint goes to stderr.
- A bad argument exits 2 with one line ``pgwake: error: ...`` on stderr, as in
  :mod:`listener.cli`; no key is printed then.
"""

from __future__ import annotations

from typing import Annotated

import typer

from listener.crypto import (
    CREDENTIAL_NAME,
    KEY_FILE_ENV,
    KEY_ID_RULE,
    KEYS_ENV,
    generate_key,
    is_valid_key_id,
)

keys_app = typer.Typer(
    help="Encryption keys for tenant database DSNs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@keys_app.callback()
def keys_callback() -> None:
    """Encryption keys for tenant database DSNs."""


def _hint(key_id: str) -> str:
    return (
        f"pgwake: new key {key_id!r} printed on stdout. Install it in one of:\n"
        f"  the environment variable {KEYS_ENV}\n"
        f"  a file (chmod 600) named by {KEY_FILE_ENV}\n"
        f"  a systemd credential: LoadCredential={CREDENTIAL_NAME}:/etc/pgwake/keys\n"
        "To rotate, put the new key FIRST and keep the old keys after it (separated by\n"
        "commas or newlines) until every stored DSN has been re-encrypted with the new key."
    )


@keys_app.command("generate")
def generate_cmd(
    key_id: Annotated[str, typer.Option("--id", help=f"Id of the new key: {KEY_ID_RULE}.")] = "k1",
) -> None:
    """Print a new random key line, <key_id>:<base64url of 32 bytes>."""
    if not is_valid_key_id(key_id):
        typer.echo(f"pgwake: error: --id must be {KEY_ID_RULE}", err=True)
        raise typer.Exit(2)
    typer.echo(generate_key(key_id))
    typer.echo(_hint(key_id), err=True)
