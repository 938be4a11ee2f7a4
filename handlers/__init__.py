"""Job handlers shipped with pgwake, and the pattern to copy for your own.

``handlers.builtin`` is always loaded by ``pgwake run``. Your own modules are loaded with
``pgwake run --handlers my_app.jobs`` and register with ``@handler`` from
:mod:`listener.api` in the same way.
"""

from __future__ import annotations
