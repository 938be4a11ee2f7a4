"""``python -m listener`` runs the ``pgwake`` CLI."""

from __future__ import annotations

from listener.cli import main

main()
