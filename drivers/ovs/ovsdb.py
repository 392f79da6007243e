"""A small typed layer over ovsdbapp for one ovsdb-server.

ovsdbapp is synchronous: it runs a connection thread that owns the IDL (the in-memory
replica of the database) and hands transactions to it through a queue. Every call
here blocks, and the driver runs each in a worker thread with asyncio.to_thread ON
PURPOSE: committing waits for ovsdb-server and then for ovs-vswitchd to apply the
change (next_cfg/cur_cfg), which must not stall the event loop.

All OVSDB changes of one reconcile go into ONE transaction (``transact``): 200 ports
are applied in ~0.4 s here that way (mostly ovs-vswitchd opening them), against
seconds as 200 transactions.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from ovsdbapp.backend.ovs_idl import command, connection, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

from drivers.ovs.actual import OvsBridge, OvsdbSnapshot, OvsPort

# Only what the driver reads or writes: ovs-vswitchd keeps updating many other columns
# (statistics, status, link state...), which would all be parsed into the replica.
COLUMNS = {
    "Open_vSwitch": ["bridges", "next_cfg", "cur_cfg", "iface_types", "datapath_types"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode"],
    "Port": ["name", "interfaces", "tag", "other_config"],
    "Interface": ["name", "type", "options", "external_ids", "ofport", "mtu_request", "error"],
}
_api_classes = itertools.count()


def col(row: Any, column: str, default: Any) -> Any:
    """A column of a row, or `default` for a row inserted by this transaction that has
    not had the column set (the IDL raises AttributeError then)."""
    try:
        return getattr(row, column)
    except AttributeError:
        return default


def _opt(value: Any) -> Any:
    """An optional column's value (the IDL gives [] or [x])."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class TxnContext:
    """What OVSDB changes run against inside one transaction (connection thread)."""

    def __init__(self, api: Any, txn: Any) -> None:
        self.api = api
        self.txn = txn
        self._bridges: dict[str, Any] = {}
        self._ports: dict[str, Any] = {}
        self._port_bridge: dict[str, Any] = {}
        for br in api.tables["Bridge"].rows.values():
            self._bridges[br.name] = br
            for port in br.ports:
                self._ports[port.name] = port
                self._port_bridge[port.name] = br

    def bridge(self, name: str) -> Any:
        return self._bridges.get(name)

    def port(self, name: str) -> Any:
        return self._ports.get(name)

    def create_bridge(self, name: str) -> Any:
        """A Bridge with its internal port (what ``ovs-vsctl add-br`` makes)."""
        br = self.txn.insert(self.api.tables["Bridge"])
        br.name = name
        ovs = next(iter(self.api.tables["Open_vSwitch"].rows.values()))
        ovs.addvalue("bridges", br)
        self._bridges[name] = br
        port = self.create_port(name, name)
        port.interfaces[0].type = "internal"
        return br

    def create_port(self, bridge: str, name: str) -> Any:
        br = self._bridges[bridge]
        iface = self.txn.insert(self.api.tables["Interface"])
        iface.name = name
        port = self.txn.insert(self.api.tables["Port"])
        port.name = name
        port.interfaces = [iface]
        br.addvalue("ports", port)
        self._ports[name] = port
        self._port_bridge[name] = br
        return port

    def move_port(self, name: str, bridge: str) -> Any:
        port = self._ports[name]
        old = self._port_bridge[name]
        new = self._bridges[bridge]
        if old is not new:
            old.delvalue("ports", port)
            new.addvalue("ports", port)
            self._port_bridge[name] = new
        return port

    def delete_port(self, name: str) -> None:
        port = self._ports.pop(name, None)
        if port is None:
            return
        br = self._port_bridge.pop(name)
        br.delvalue("ports", port)
        for iface in port.interfaces:
            iface.delete()
        port.delete()


class OvsdbOp(Protocol):
    def run_ovsdb(self, ctx: TxnContext) -> None: ...


class _Batch(command.BaseCommand):  # type: ignore[misc]
    """One ovsdbapp command running a whole batch of changes in one transaction."""

    def __init__(self, api: Any, ops: Sequence[OvsdbOp]) -> None:
        super().__init__(api)
        self.ops = tuple(ops)

    def run_idl(self, txn: Any) -> None:
        ctx = TxnContext(self.api, txn)
        for op in self.ops:
            op.run_ovsdb(ctx)

    def __str__(self) -> str:
        return f"Batch({len(self.ops)} changes)"


class _Read(command.ReadOnlyCommand):  # type: ignore[misc]
    """Runs `fn(api)` under the connection lock: a consistent view of the replica."""

    def __init__(self, api: Any, fn: Callable[[Any], Any]) -> None:
        super().__init__(api)
        self.fn = fn

    def run_idl(self, txn: Any) -> None:
        self.result = self.fn(self.api)


def _snapshot(api: Any) -> OvsdbSnapshot:
    bridges: dict[str, OvsBridge] = {}
    ports: dict[str, OvsPort] = {}
    for br in api.tables["Bridge"].rows.values():
        bridges[br.name] = OvsBridge(br.name, br.datapath_type, _opt(br.fail_mode))
        for port in br.ports:
            iface = port.interfaces[0] if port.interfaces else None
            ports[port.name] = OvsPort(
                name=port.name,
                bridge=br.name,
                tag=_opt(port.tag),
                other_config=dict(port.other_config),
                iface_type=iface.type if iface is not None else "",
                options=dict(iface.options) if iface is not None else {},
                external_ids=dict(iface.external_ids) if iface is not None else {},
                ofport=_opt(iface.ofport) if iface is not None else None,
                mtu_request=_opt(iface.mtu_request) if iface is not None else None,
                error=_opt(iface.error) if iface is not None else None,
            )
    iface_types: frozenset[str] = frozenset()
    datapath_types: frozenset[str] = frozenset()
    for ovs in api.tables["Open_vSwitch"].rows.values():
        iface_types = frozenset(ovs.iface_types)
        datapath_types = frozenset(ovs.datapath_types)
    return OvsdbSnapshot(bridges, ports, iface_types, datapath_types)


class Ovsdb:
    """One connection (own IDL and connection thread) to one ovsdb-server. Blocking."""

    def __init__(self, remote: str, timeout: float) -> None:
        self.remote = remote
        self.timeout = timeout
        self._api: Any = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        with self._lock:
            if self._api is not None:
                return
            helper = idlutils.get_schema_helper(self.remote, "Open_vSwitch")
            for table, columns in COLUMNS.items():
                helper.register_columns(table, columns)
            idl = connection.OvsdbIdl.from_server(self.remote, "Open_vSwitch", helper=helper)
            conn = connection.Connection(idl, timeout=self.timeout)
            # ovsdbapp keeps the connection in a CLASS attribute (first one wins): a
            # class of our own per connection, or two nodes in one process would
            # share the first node's database.
            api_class = type(
                f"BaryonOvsdbIdl{next(_api_classes)}",
                (impl_idl.OvsdbIdl,),
                {"_ovsdb_connection": None},
            )
            self._api = api_class(conn)

    def disconnect(self) -> None:
        with self._lock:
            if self._api is None:
                return
            self._api.ovsdb_connection.stop(timeout=self.timeout)
            self._api = None

    @property
    def api(self) -> Any:
        if self._api is None:
            raise RuntimeError(f"not connected to {self.remote}")
        return self._api

    def snapshot(self) -> OvsdbSnapshot:
        result: OvsdbSnapshot = _Read(self.api, _snapshot).execute(check_error=True)
        return result

    def transact(self, ops: Sequence[OvsdbOp]) -> None:
        """Run `ops` in one transaction; waits until ovs-vswitchd has applied it."""
        if not ops:
            return
        with self.api.transaction(check_error=True, log_errors=False) as txn:
            txn.add(_Batch(self.api, ops))


def merged(
    current: Mapping[str, str], ours: Mapping[str, str], keys: frozenset[str]
) -> dict[str, str]:
    """`current` with the keys we manage replaced by `ours` (others left alone)."""
    out = {k: v for k, v in current.items() if k not in keys}
    out.update(ours)
    return out
