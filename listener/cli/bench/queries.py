"""The benchmark's named SQL (``bench.sql`` beside this module), loaded once at import.

Same format and naming rule as the runtime queries (see listener/queries.py). These
statements load and inspect a benchmark's own database; no worker runs them, so they are
kept out of the runtime ``QUERIES``. A name is unique across both mappings (a test holds
it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from listener.queries import load

BENCH_QUERIES: Final = load([Path(__file__).with_name("bench.sql")])
