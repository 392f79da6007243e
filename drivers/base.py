"""The protocol every host dataplane (mechanism) driver implements.

A driver converges a host towards a desired ``HostState`` in three steps:

1. ``read_actual()`` reads what the host looks like now (I/O);
2. ``diff(desired, actual)`` computes a ``Plan``: an ordered tuple of small, idempotent
   change objects (pure: no I/O, so it can be tested and logged);
3. ``apply(plan)`` executes the changes.

Changes that remove things the desired state does not mention are flagged
``removes_stale``. ``sync(desired, remove_stale=False)`` drops them, so an agent that has
just restarted (and does not yet know the full desired state) never interrupts traffic;
it passes ``remove_stale=True`` once it is in sync with the controller.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, cast, runtime_checkable

from drivers.model import HostState, PortStatus
from drivers.netlink import open_iproute

log = logging.getLogger(__name__)

ActualT = TypeVar("ActualT")


@runtime_checkable
class Change(Protocol):
    """One small, idempotent step of a plan (a frozen dataclass in practice)."""

    @property
    def removes_stale(self) -> bool:
        """True when this change deletes something the desired state does not mention."""
        ...


@dataclass(frozen=True)
class Plan:
    """An ordered tuple of changes; empty (falsy) when the host is converged."""

    changes: tuple[Change, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changes)

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def without_stale_removals(self) -> Plan:
        return Plan(tuple(c for c in self.changes if not c.removes_stale))

    @property
    def stale_removals(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.removes_stale)

    def describe(self) -> list[str]:
        return [str(c) for c in self.changes]


class ApplyError(Exception):
    """Some changes of a plan failed; the others were applied."""

    def __init__(self, failures: Sequence[tuple[Change, BaseException]]) -> None:
        self.failures = tuple(failures)
        # Filled in by DriverBase.sync: the port statuses read back after the attempt.
        self.statuses: list[PortStatus] = []
        lines = "; ".join(f"{c}: {e!r}" for c, e in self.failures)
        super().__init__(f"{len(self.failures)} change(s) failed: {lines}")


class _HostChange(Protocol):
    async def apply(self, host: Any) -> None: ...


async def apply_in_order(
    plan: Plan,
    host: object,
    change_types: Any,
    kind: str,
    logger: logging.Logger,
    *,
    skip: Callable[[Any], bool] | None = None,
    failed: Callable[[Any], None] | None = None,
) -> None:
    """Apply every change of `plan` to `host` (``await change.apply(host)``) in order;
    failures are logged to `logger`, collected and raised together (ApplyError).

    change_types: what isinstance accepts (a class or a union); any other change is a
    bug: TypeError, "not <kind> change". skip(change): True to pass a change over;
    failed(change): called after a change failed.
    """
    failures: list[tuple[Change, BaseException]] = []
    for change in plan:
        if not isinstance(change, change_types):
            raise TypeError(f"not {kind} change: {change!r}")
        if skip is not None and skip(change):
            continue
        try:
            await cast(_HostChange, change).apply(host)
        except Exception as exc:
            logger.warning("change failed: %s: %r", change, exc)
            failures.append((change, exc))
            if failed is not None:
                failed(change)
    if failures:
        raise ApplyError(failures)


class _Converging(Protocol):
    async def read_actual(self) -> Any: ...

    def diff(self, desired: Any, actual: Any) -> Plan: ...

    async def apply(self, plan: Plan) -> None: ...


async def converge(
    driver: _Converging, desired: Any, *, remove_stale: bool, logger: logging.Logger
) -> Plan:
    """Read the actual state back, diff it with `desired` and apply the plan (without its
    stale removals unless `remove_stale`); returns the plan applied (empty: nothing to
    do). The caller holds its lock."""
    plan = driver.diff(desired, await driver.read_actual())
    if not remove_stale:
        plan = plan.without_stale_removals()
    if plan:
        logger.debug("applying %d change(s): %s", len(plan), plan.describe())
        await driver.apply(plan)
    return plan


class MechanismDriver(Protocol[ActualT]):
    """What the node agent calls. ``vif_type`` is what port bindings report."""

    @property
    def name(self) -> str: ...

    @property
    def vif_type(self) -> str: ...

    async def start(self) -> None:
        """Open resources and probe what this host supports."""
        ...

    async def close(self) -> None: ...

    def supported_network_types(self) -> frozenset[str]: ...

    async def read_actual(self) -> ActualT: ...

    def diff(self, desired: HostState, actual: ActualT) -> Plan: ...

    async def apply(self, plan: Plan) -> None: ...

    async def port_statuses(self, desired: HostState) -> list[PortStatus]: ...

    async def sync_ports(
        self, desired: HostState, port_ids: Collection[str]
    ) -> list[PortStatus] | None:
        """Converge only the ports `port_ids` of `desired` (added or changed, their
        networks already in place), reading back only their devices; returns their
        statuses. None: this driver, or this case, needs a full ``sync``."""
        ...

    async def sync(self, desired: HostState, *, remove_stale: bool) -> list[PortStatus]: ...


class DriverBase(ABC, Generic[ActualT]):
    """Shared ``sync``/``port_statuses`` built on the abstract primitives, and what
    ``start()`` sets up: the netlink socket of the managed namespace (``_ipr``) and the
    network types this host supports (``_supported``, ``_unsupported``)."""

    def __init__(self) -> None:
        self._sync_lock = asyncio.Lock()
        self._ipr: Any = None
        self._supported: frozenset[str] | None = None
        self._unsupported: dict[str, str] = {}

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _open_ipr(self, netns: str | None) -> None:
        if self._ipr is None:
            self._ipr = open_iproute(netns)

    def _close_ipr(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _require_ipr(self) -> Any:
        if self._ipr is None:
            raise RuntimeError(f"{type(self).__name__}: call start() first")
        return self._ipr

    def supported_network_types(self) -> frozenset[str]:
        if self._supported is None:
            raise RuntimeError(f"{type(self).__name__}: call start() first")
        return self._supported

    def unsupported_network_types(self) -> dict[str, str]:
        """network type -> why this host cannot carry it (after start())."""
        return dict(self._unsupported)

    @abstractmethod
    async def read_actual(self) -> ActualT: ...

    @abstractmethod
    def diff(self, desired: HostState, actual: ActualT) -> Plan: ...

    @abstractmethod
    async def apply(self, plan: Plan) -> None: ...

    @abstractmethod
    def statuses(self, desired: HostState, actual: ActualT) -> list[PortStatus]:
        """Pure: the status of every desired port given an actual state."""

    async def port_statuses(self, desired: HostState) -> list[PortStatus]:
        return self.statuses(desired, await self.read_actual())

    async def sync_ports(
        self, desired: HostState, port_ids: Collection[str]
    ) -> list[PortStatus] | None:
        """Converge only the ports `port_ids` of `desired` (added or changed, their
        networks already in place), reading back only their devices; returns their
        statuses. None: this driver, or this case, needs a full ``sync``."""
        return None

    async def sync(self, desired: HostState, *, remove_stale: bool) -> list[PortStatus]:
        """Converge the host; returns the port statuses read back afterwards.

        Raises ApplyError if some changes failed (after applying all the others); its
        ``statuses`` then hold the port statuses read back after the attempt.
        """
        async with self._sync_lock:
            actual = await self.read_actual()
            plan = self.diff(desired, actual)
            if not remove_stale:
                plan = plan.without_stale_removals()
            if not plan:
                return self.statuses(desired, actual)
            log.debug("applying %d change(s): %s", len(plan), plan.describe())
            try:
                await self.apply(plan)
            except ApplyError as exc:
                exc.statuses = self.statuses(desired, await self.read_actual())
                raise
            return self.statuses(desired, await self.read_actual())
