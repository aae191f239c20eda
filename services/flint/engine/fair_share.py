"""Fair shares between tenants of one engine: batch slots, KV blocks and the request queue.

A request's tenant is the front-end's `cache_namespace` (the authenticated tenant; "" without auth, so
one tenant and no fairness). While one tenant is active it may use the whole replica. While several
are (they have requests running or waiting), each one's share is an equal part of the batch slots and
of the KV blocks. Shares never leave resources idle: a tenant may take free room beyond its share.
What they change is who gives way when room runs out:

- a tenant below its share may preempt (recompute preemption, as for priorities) requests of a tenant
  over its share, of the same or a lower priority class; an interactive request of another tenant is
  never preempted by bulk work;
- when KV growth must preempt, the victim is bulk before interactive, then the tenant most over its
  share, then the latest arrival;
- a starving request of a tenant at its share does not hold back other tenants' admissions;
- the engine's queue (`QueueShares`) keeps room for the shares of other active tenants, so one
  tenant's flood cannot fill it; a tenant refused at a full queue stays active for a moment
  (`WANT_HOLD_S`), so the next free place is kept for it, not taken by the flooding tenant again;
- the replica's and the front-end's saturation refusals (flint.admission: queue at `max_waiting`, KV
  nearly full) skip a tenant holding fewer requests than the average of the active tenants.
"""

from __future__ import annotations

import time
from collections import Counter

from flint.admission import below_average_share
from flint.engine.request import Request
from flint.errors import ResourceExhausted

# A tenant refused at a full queue keeps a claim on its share this long (its client retries after 100 ms).
WANT_HOLD_S = 2.0


class FairShare:
    """Batch-slot and KV-block shares of the tenants active in a scheduler (`refresh` once per step)."""

    def __init__(self, max_slots: int, num_blocks: int, block_size: int, running: list[Request]):
        self._max_slots = max_slots
        self._num_blocks = num_blocks
        self._block_size = block_size
        self._running = running          # the scheduler's running list (mutated in place by it)
        self.active = False              # more than one tenant has work
        self.slot_share = max_slots
        self.block_share = num_blocks

    def refresh(self, running: list[Request], waiting) -> None:
        tenants = {r.tenant for r in running} | {r.tenant for q in waiting for r in q}
        n = max(1, len(tenants))
        self.active = n > 1
        self.slot_share = max(1, self._max_slots // n)
        self.block_share = max(1, self._num_blocks // n)

    def usage(self) -> dict[str, tuple[int, int]]:
        """Running requests and KV blocks held (cached prefix included) per tenant."""
        slots: Counter = Counter()
        blocks: Counter = Counter()
        for r in self._running:
            slots[r.tenant] += 1
            blocks[r.tenant] += -(-r.num_slots // self._block_size)
        return {t: (slots[t], blocks[t]) for t in slots}

    def excess(self, usage: dict, tenant: str) -> float:
        """How far over its share a tenant is (its larger ratio of use to share); 0 while one tenant is active."""
        if not self.active:
            return 0.0
        slots, blocks = usage.get(tenant, (0, 0))
        return max(slots / self.slot_share, blocks / self.block_share)

    def at_share(self, tenant: str) -> bool:
        """Several tenants are active and `tenant` holds at least its share of slots or blocks."""
        if not self.active:
            return False
        slots, blocks = self.usage().get(tenant, (0, 0))
        return slots >= self.slot_share or blocks >= self.block_share

    def slot_victims(self, req: Request) -> list[Request]:
        """Running requests `req` may preempt for a batch slot: its tenant is below its slot share, theirs
        over it, and they are of the same or a lower priority class."""
        if not self.active:
            return []
        usage = self.usage()
        if usage.get(req.tenant, (0, 0))[0] + 1 > self.slot_share:
            return []
        return [r for r in self._running if r.tenant != req.tenant and r.priority >= req.priority
                and usage[r.tenant][0] > self.slot_share]

    def kv_victims(self, req: Request, need_blocks: int) -> list[Request]:
        """Running requests `req` may preempt for `need_blocks` KV blocks: its tenant stays within its block
        share with them, theirs is over it, and they are of the same or a lower priority class."""
        if not self.active:
            return []
        usage = self.usage()
        if usage.get(req.tenant, (0, 0))[1] + need_blocks > self.block_share:
            return []
        return [r for r in self._running if r.tenant != req.tenant and r.priority >= req.priority
                and usage[r.tenant][1] > self.block_share]


class QueueShares:
    """Requests per tenant in one engine (waiting or running), at most `capacity` in all.

    A tenant at or over its share (capacity / active tenants) is refused once the free places left are
    no more than what the other active tenants are owed up to their shares; a tenant below its share
    gets any free place. Called under the engine's inbox lock.
    """

    def __init__(self, capacity: int, clock=time.monotonic):
        self.capacity = capacity
        self._counts: Counter = Counter()
        self._wanting: dict[str, float] = {}     # tenant -> until when its refused claim holds
        self._clock = clock

    def take(self, tenant: str) -> None:
        """Count one more request of `tenant`, or raise RESOURCE_EXHAUSTED."""
        now = self._clock()
        self._wanting = {t: until for t, until in self._wanting.items() if until > now and not self._counts[t]}
        active = {t for t, n in self._counts.items() if n} | set(self._wanting) | {tenant}
        share = max(1, self.capacity // len(active))
        total = sum(self._counts.values())
        free = self.capacity - total
        mine = self._counts[tenant]
        owed = sum(max(0, share - self._counts[t]) for t in active if t != tenant)
        if free <= 0 or (mine >= share and free <= owed):
            if mine < share:
                self._wanting[tenant] = now + WANT_HOLD_S
            raise ResourceExhausted(
                f"engine queue is full ({total} requests, {mine} of them this tenant's, whose fair share is "
                f"{share} while {len(active)} tenants are active); retry later", retry_after_ms=100)
        self._counts[tenant] = mine + 1

    def release(self, tenant: str) -> None:
        self._counts[tenant] -= 1
        if self._counts[tenant] <= 0:
            del self._counts[tenant]

    def below_share(self, tenant: str) -> bool:
        return below_average_share(self._counts, tenant)

    def __len__(self) -> int:
        return sum(self._counts.values())
