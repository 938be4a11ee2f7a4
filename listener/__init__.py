"""pgwake's worker service: config, database, listening, claiming, executing, completing.

Handlers import only :mod:`listener.api`; everything else here is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"
