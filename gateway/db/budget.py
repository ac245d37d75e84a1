"""The connection budget: how many connections one instance may pool, and why.

Every instance opens its own pool, so the pools of all instances together must fit the
database's ``max_connections``::

    pool_max = floor((max_connections − reserved − admin − instances × direct) / instances)

capped by ``GATEWAY_POOL_MAX``. ``direct`` is what one instance holds outside its pool:
the metadata listener (1). The request log, maintenance and the realtime poller borrow
pool connections. An impossible plan is a ``PlanError`` whose one-line message shows the
arithmetic; ``gateway serve`` refuses to start with it.

Pure arithmetic, apart from the pool (``gateway/db/pool.py``) that asks the database for
its limits and opens the connections: ``gateway pool-plan`` and the tests check a plan
for any database size without one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from gateway.settings import Settings

DEFAULT_POOL_MAX = 10  # only when no plan is given (create_pool(settings) without a plan)
DIRECT_CONNECTIONS_PER_INSTANCE = 1  # the metadata listener (LISTEN needs its own session)
WAITING_PER_CONNECTION = 8  # default GATEWAY_POOL_MAX_WAITING = 8 × pool max

# Neon: max_connections by compute size (Neon docs, connection pooling page, 2026); 7 of
# them are reserved for Neon's superuser.
NEON_RESERVED_CONNECTIONS = 7
NEON_MAX_CONNECTIONS: dict[str, int] = {
    "0.25": 104,
    "0.5": 209,
    "1": 419,
    "2": 839,
    "3": 1258,
    "4": 1678,
    "5": 2098,
    "6": 2517,
    "7": 2937,
    "8": 3357,
    **{str(cu): 4000 for cu in range(9, 57)},
}


class PlanError(ValueError):
    """A connection plan that can't work; the message is one line with the arithmetic."""


def _num(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class PoolPlan:
    """How many connections one instance may hold, and why."""

    instances: int
    max_connections: int
    reserved: int
    admin: int
    direct_per_instance: int
    pool_max: int
    pool_min: int
    max_waiting: int
    timeout: float
    source: str
    budget_per_instance: int  # the formula's result before GATEWAY_POOL_MAX
    cap: int | None = None  # GATEWAY_POOL_MAX

    @property
    def budget_expression(self) -> str:
        return (
            f"floor(({self.max_connections} − {self.reserved} − {self.admin} − "
            f"{self.instances} × {self.direct_per_instance}) / {self.instances})"
        )

    @property
    def per_instance_connections(self) -> int:
        """Pool plus direct connections: the most one instance ever holds."""
        return self.pool_max + self.direct_per_instance

    @property
    def planned_connections(self) -> int:
        """The most all planned instances hold together (admin head-room not included)."""
        return self.instances * self.per_instance_connections

    def arithmetic(self) -> str:
        """One line, e.g. ``pool_max = floor((104 − 7 − 3 − 3 × 1) / 3) = 30``."""
        if self.cap is not None:
            return (
                f"pool_max = min(GATEWAY_POOL_MAX {self.cap}, "
                f"{self.budget_expression} = {self.budget_per_instance}) = {self.pool_max}"
            )
        return f"pool_max = {self.budget_expression} = {self.pool_max}"

    def summary(self) -> str:
        return (
            f"{self.arithmetic()}; per instance {self.pool_max} pooled + "
            f"{self.direct_per_instance} direct, {self.instances} instance(s) hold at most "
            f"{self.planned_connections} of {self.max_connections} connections "
            f"({self.reserved} reserved, {self.admin} for admin) [limits: {self.source}]"
        )

    def as_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["arithmetic"] = self.arithmetic()
        payload["per_instance_connections"] = self.per_instance_connections
        payload["planned_connections"] = self.planned_connections
        return payload


def plan_pool(
    settings: Settings,
    max_connections: int,
    reserved: int,
    *,
    source: str = "settings",
    instances: int | None = None,
) -> PoolPlan:
    """The per-instance pool for ``settings`` against a database of ``max_connections``.

    Raises ``PlanError`` (one line, with the arithmetic) when the budget leaves less than
    one pooled connection per instance, or when ``GATEWAY_POOL_MAX`` asks for more than
    the budget gives.
    """
    instances = instances if instances is not None else settings.instances
    if instances < 1:
        raise PlanError(f"impossible connection plan: instances = {instances} (at least 1)")
    admin = settings.db_admin_connections
    direct = DIRECT_CONNECTIONS_PER_INSTANCE
    budget = (max_connections - reserved - admin - instances * direct) // instances
    cap = settings.pool_max
    pool_max = budget if cap is None else min(cap, budget)
    plan = PoolPlan(
        instances=instances,
        max_connections=max_connections,
        reserved=reserved,
        admin=admin,
        direct_per_instance=direct,
        pool_max=pool_max,
        pool_min=max(0, min(settings.pool_min, pool_max)),
        max_waiting=(
            settings.pool_max_waiting
            if settings.pool_max_waiting is not None
            else WAITING_PER_CONNECTION * max(pool_max, 1)
        ),
        timeout=settings.pool_timeout_s,
        source=source,
        budget_per_instance=budget,
        cap=cap,
    )
    if budget < 1:
        raise PlanError(
            f"impossible connection plan: pool_max = {plan.budget_expression} = {budget} < 1 "
            f"[limits: {source}]; raise max_connections or lower GATEWAY_INSTANCES or "
            f"GATEWAY_DB_ADMIN_CONNECTIONS"
        )
    if cap is not None and cap > budget:
        raise PlanError(
            f"impossible connection plan: GATEWAY_POOL_MAX={cap} overflows the budget: "
            f"{plan.budget_expression} = {budget} per instance [limits: {source}]"
        )
    return plan


def static_plan(settings: Settings, max_size: int | None = None) -> PoolPlan:
    """A plan without a budget (no database asked): the explicit size or the default."""
    size = max_size or settings.pool_max or DEFAULT_POOL_MAX
    return PoolPlan(
        instances=settings.instances,
        max_connections=0,
        reserved=0,
        admin=settings.db_admin_connections,
        direct_per_instance=DIRECT_CONNECTIONS_PER_INSTANCE,
        pool_max=size,
        pool_min=min(settings.pool_min, size),
        max_waiting=(
            settings.pool_max_waiting
            if settings.pool_max_waiting is not None
            else WAITING_PER_CONNECTION * size
        ),
        timeout=settings.pool_timeout_s,
        source="fixed size, no budget",
        budget_per_instance=size,
        cap=None,
    )


def neon_limits(cu: str) -> tuple[int, int]:
    """``(max_connections, reserved)`` of a Neon compute of ``cu`` compute units."""
    key = cu.strip()
    try:
        number = float(key)
    except ValueError:
        number = math.nan
    if not math.isnan(number):
        key = _num(number)
    if key not in NEON_MAX_CONNECTIONS:
        sizes = "0.25, 0.5, 1, 2, 3, 4, 5, 6, 7, 8, 9…56"
        raise PlanError(f"unknown Neon compute size {cu!r}: one of {sizes}")
    return NEON_MAX_CONNECTIONS[key], NEON_RESERVED_CONNECTIONS
