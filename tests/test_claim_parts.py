"""The parts the claim loop is made of, each on its own (no database): the ledger of
held jobs, the tenants' shares, the order in which runners start jobs."""

from __future__ import annotations

from collections import Counter

import anyio

from listener.ledger import Ledger
from listener.runners import _Fifo, _Turns
from listener.shares import TenantShares
from tests.support.jobs import held_job as job


def test_ledger_counts_a_job_from_claim_to_stored_outcome() -> None:
    ledger = Ledger()
    a1, a2, b1 = job(1, "a"), job(2, "a"), job(3, "b")
    ledger.add([a1, a2, b1])
    assert (ledger.in_flight, ledger.unacked) == (3, 0)
    assert ledger.claimed == Counter({"a": 2, "b": 1})
    # A handler ends: in flight no more, unacked until stored; still known.
    assert ledger.ended(a1) == 2
    assert (ledger.in_flight, ledger.unacked) == (2, 1)
    assert ledger.claimed == Counter({"a": 1, "b": 1})
    assert ledger.known == {1, 2, 3}
    # A dropped job leaves at once, with nothing to store.
    assert ledger.dropped(b1) == 1
    assert "b" not in ledger.claimed
    assert ledger.known == {1, 2}
    ledger.stored([1])
    assert (ledger.in_flight, ledger.unacked) == (1, 0)
    assert ledger.known == {2}


async def test_ledger_is_idle_exactly_while_nothing_is_in_flight() -> None:
    ledger = Ledger()
    await ledger.wait_idle()  # returns at once: nothing held
    ledger.add([job(1, "a"), job(2, "b")])
    idle: list[bool] = []

    async def waiter() -> None:
        await ledger.wait_idle()
        idle.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert idle == []  # two in flight
        ledger.ended(job(1, "a"))
        await anyio.wait_all_tasks_blocked()
        assert idle == []  # one still in flight
        ledger.dropped(job(2, "b"))
    assert idle == [True]
    await ledger.wait_idle()  # and again at once

    # wait_freed waits for the next change that frees a slot: a job that ends, or
    # outcomes stored (the caller looks at the free slots before it waits).
    freed: list[str] = []

    async def free_waiter(name: str) -> None:
        await ledger.wait_freed()
        freed.append(name)

    ledger.add([job(3, "a")])
    for name, free in (("ended", lambda: ledger.ended(job(3, "a"))), ("stored", None)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(free_waiter, name)
            await anyio.wait_all_tasks_blocked()
            assert freed == ([] if name == "ended" else ["ended"])
            if free is not None:
                free()
            else:
                ledger.stored([3])
    assert freed == ["ended", "stored"]
    assert (ledger.known, ledger.unacked) == ({1}, 1)  # job 1's outcome is still unstored


def test_ledger_calls_an_unknown_id_an_orphan_only_at_the_second_look() -> None:
    ledger = Ledger()
    ledger.add([job(1, "a")])
    assert ledger.reconcile([1, 7]) == []  # 7 may be a claim's reply on its way
    assert ledger.reconcile([1, 7, 8]) == [7]
    assert ledger.reconcile([1]) == []  # 8 went away: not an orphan
    assert ledger.reconcile([1, 8]) == []


def test_shares_lone_tenant_borrows_and_gives_back() -> None:
    shares = TenantShares(concurrency=32, tenant_concurrency=8)
    assert shares.caps_bind
    assert shares.lone_extra == 32 - 2 - 8
    assert shares.run_cap("a") == 8
    cap = shares.claim_cap(0)
    # A whole claim found only tenant a, and held it to its cap: a borrows.
    shares.after_claim(Counter({"a": 8}), {}, cap, ["a"], full=False, whole=True)
    assert shares.lone == "a"
    assert shares.run_cap("a") == 30
    assert shares.run_cap("b") == 8
    # It counts fewer jobs against the claim's cap by the slots it borrows.
    assert shares.counted("a", 8, 0) == 8 - 22
    # Another tenant comes: a stops borrowing.
    shares.after_claim(Counter({"b": 1}), {"a": -14}, cap, [], full=False, whole=True)
    assert shares.lone is None
    assert shares.run_cap("a") == 8


def test_shares_a_capped_tenant_asks_for_a_claim_when_under_its_cap() -> None:
    shares = TenantShares(concurrency=32, tenant_concurrency=8)
    assert not shares.held_to_cap(["a"], {"a": 8}, 0)
    # One of its 8 jobs ends: it may have more ready jobs, claim now (once).
    assert shares.freed("a", 8, 0)
    assert not shares.freed("a", 7, 0)
    # A tenant already under its cap when the claim's jobs were counted: claim again.
    assert shares.held_to_cap(["b"], {"b": 3}, 0)


def test_shares_caps_never_bind_when_a_tenant_may_use_every_slot() -> None:
    shares = TenantShares(concurrency=16, tenant_concurrency=16)
    assert not shares.caps_bind
    assert shares.lone_extra == 0


def test_turns_take_tenants_in_turn_under_their_cap() -> None:
    shares = TenantShares(concurrency=4, tenant_concurrency=2)
    turns = _Turns(shares)
    jobs = [job(1, "a"), job(2, "a"), job(3, "a"), job(4, "b")]
    turns.add(jobs)
    taken = [turns.take(), turns.take(), turns.take()]
    assert [j.id for j in taken if j is not None] == [1, 4, 2]
    # a runs 2, its cap: its third job waits until one of them stops.
    assert turns.take() is None
    assert not turns
    assert turns.stopped(jobs[0])
    third = turns.take()
    assert third is not None
    assert third.id == 3
    assert turns.clear() == []


def test_fifo_keeps_the_claims_order() -> None:
    fifo = _Fifo()
    jobs = [job(1, "a"), job(2, "b"), job(3, "a")]
    fifo.add(jobs)
    assert fifo
    first = fifo.take()
    assert first is not None
    assert not fifo.stopped(first)
    assert fifo.clear() == jobs[1:]
    assert fifo.take() is None
