"""Keep a DSN given on the command line out of the process list.

``ps`` shows a process's argv. When ``--dsn`` carries a password, :func:`scrub_argv`
rewrites the process title with the password masked as soon as the CLI starts. There is
a short window between exec and the rewrite, so PGWAKE_DSN, a config file or
``~/.pgpass`` remain the recommended ways to pass a password.
"""

from __future__ import annotations

import sys

from listener.redact import redact


def scrub_argv(argv: list[str] | None = None) -> bool:
    """Mask passwords in the visible command line; True when something was masked."""
    argv = sys.argv if argv is None else argv
    cleaned = [redact(arg) for arg in argv]
    if cleaned == argv:
        return False
    import setproctitle  # noqa: PLC0415 - only needed when there is something to hide

    setproctitle.setproctitle(" ".join(cleaned))
    return True
