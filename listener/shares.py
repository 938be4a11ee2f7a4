"""Tenants' shares of one worker: how many jobs of a tenant may run, and be claimed, at
once, and when a tenant alone with a backlog borrows the idle slots.

Invariants:
- A tenant runs at most ``tenant_concurrency`` jobs at once (``run_cap``), except the
  lone tenant: the only one with ready jobs, held to its cap, with no other tenant at
  its cap. It may run up to ``concurrency`` minus a reserve (a sixteenth, at least
  one) kept free for the tenant that comes next.
- A tenant starts borrowing only after a claim that walked every tenant with ready jobs
  found it alone (``after_claim``); it stops as soon as a claim serves another tenant,
  or when a claim that was not full gave it fewer jobs than it had room for (its
  backlog is done). From then on it counts all its jobs against its cap again, so the
  slots it frees go to the newcomer.
- A tenant a claim held to its cap may have more ready jobs: it is remembered
  (``capped``), and the first of its jobs to end afterwards asks for a claim at once
  (``freed`` returns True), so its backlog never waits for a NOTIFY or the poll.
- The claim's cap per tenant grows with the jobs claimed ahead of free slots
  (``claim_cap``), since those wait for a runner and are not running yet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping

# A lone tenant may borrow idle slots beyond tenant_concurrency, but this share of the
# worker's slots (at least one) stays free for a tenant that comes next: 2 of the
# default 32. An eighth (4 of 32) left the most common deployment, a single tenant, at
# most 28/32 of its worker, and its drains of 1 ms jobs under 0.8 x the rate with every
# slot in some runs (docs/architecture.md, "A lone tenant borrows idle slots").
RESERVE_SHARE = 16


class TenantShares:
    """The caps per tenant of one worker, and the lone tenant that borrows."""

    __slots__ = ("_capped", "_concurrency", "_tenant_concurrency", "lone", "lone_extra")

    def __init__(self, *, concurrency: int, tenant_concurrency: int) -> None:
        self._concurrency = concurrency
        self._tenant_concurrency = tenant_concurrency
        # The tenant that borrows idle slots (None while none does), and how many slots
        # beyond tenant_concurrency it may use.
        self.lone: str | None = None
        self.lone_extra = max(
            0, concurrency - max(1, concurrency // RESERVE_SHARE) - tenant_concurrency
        )
        # Tenants the last claims held to their cap: they may have more ready jobs.
        self._capped: set[str] = set()

    @property
    def caps_bind(self) -> bool:
        """False when no tenant's cap can hold it below the worker's (``tenant_concurrency``
        equals ``concurrency``): tenants need not be counted to run their jobs."""
        return self._tenant_concurrency < self._concurrency

    def run_cap(self, tenant: str) -> int:
        """How many jobs of ``tenant`` may run at once."""
        if tenant == self.lone:
            return self._tenant_concurrency + self.lone_extra
        return self._tenant_concurrency

    def claim_cap(self, ahead: int, extra: int = 0) -> int:
        """The jobs of one tenant (``extra`` more for the lone tenant) this worker may
        hold claimed and not finished, with ``ahead`` jobs claimed ahead of free slots:
        its cap of running jobs, grown in proportion, since those wait for a runner."""
        slots = self._tenant_concurrency + extra
        return math.ceil(slots * (self._concurrency + ahead) / self._concurrency)

    def counted(self, tenant: str, claimed: int, ahead: int) -> int:
        """What ``claimed`` jobs of ``tenant`` count against ``claim_cap(ahead)``: all
        of them, but fewer by the slots the lone tenant borrows (the count may go below
        zero; the claim gives a tenant the cap minus it)."""
        if tenant == self.lone:
            return claimed - (self.claim_cap(ahead, self.lone_extra) - self.claim_cap(ahead))
        return claimed

    def after_claim(
        self,
        got: Counter[str],
        counted: Mapping[str, int],
        cap: int,
        cap_held: Iterable[str],
        *,
        full: bool,
        whole: bool,
    ) -> None:
        """After a claim (``got`` jobs per tenant; ``counted``, what each tenant's
        claimed jobs counted against ``cap`` when it began; ``cap_held``, the tenants it
        held to their cap; ``full``: it filled its ask or held a tenant to its share;
        ``whole``: its walk found every tenant with ready jobs and each got jobs):
        decide whether a lone tenant borrows idle slots (see the module's invariants)."""
        lone = self.lone
        if lone is not None:
            free = cap - counted.get(lone, 0)
            done = not full and free > 0 and got[lone] < free
            if done or any(tenant != lone for tenant in got):
                self.lone = None
        elif self.lone_extra > 0:
            # The tenants this claim held to their cap, and those it passed over for
            # being at it when it began (they may have ready jobs too).
            held = {tenant for tenant, count in counted.items() if count >= cap}
            held.update(cap_held)
            # The walk found every tenant with ready jobs, and they all are that one.
            if whole and len(held) == 1 and held.issuperset(got):
                (self.lone,) = held

    def held_to_cap(self, tenants: Iterable[str], claimed: Mapping[str, int], ahead: int) -> bool:
        """Once a claim's jobs are counted in ``claimed``: remember the ``tenants`` it
        held to their cap. True if one of them is under its cap already (one of its jobs
        ended while the claim was on its way): claim again now."""
        cap = self.claim_cap(ahead)
        again = False
        for tenant in tenants:
            if self.counted(tenant, claimed.get(tenant, 0), ahead) >= cap:
                self._capped.add(tenant)
            else:
                again = True
        return again

    def freed(self, tenant: str, claimed_before: int, ahead: int) -> bool:
        """A job of ``tenant`` left (it had ``claimed_before`` jobs in flight). True if
        the claim loop should claim now rather than at the next wake: the tenant was
        held to its cap and is under it now, so it may have more ready jobs; or one
        tenant alone is held to its cap and another's job ended, so the capped one may
        be alone now and borrow."""
        capped = self._capped
        if tenant in capped:
            if self.counted(tenant, claimed_before - 1, ahead) < self.claim_cap(ahead):
                capped.discard(tenant)
                return True
            return False
        return self.lone is None and self.lone_extra > 0 and len(capped) == 1
