"""Pure: the plan that converges a host's DHCP service (no I/O).

Per network, in order: namespace and state directory, the DHCP port (veth into the
network's bridge), its addresses, the hosts and options files, then dnsmasq: started
when none runs with exactly the desired command line (served subnets, lease time,
device are on it), else sent SIGHUP when the files it has read differ from the desired
ones (a marker "<pid> <digest>" written after each start/reload says what it read).
A network without any DHCP-enabled subnet gets no service. Networks this host no
longer serves are removed last, flagged ``removes_stale``.
"""

from __future__ import annotations

from collections.abc import Mapping

from drivers.base import Change, Plan
from drivers.dhcp import config
from drivers.dhcp.actual import DhcpActual, DhcpHostActual
from drivers.dhcp.changes import (
    DeleteDhcpDevice,
    DeleteDhcpNetwork,
    EnsureDhcpNamespace,
    EnsureDhcpPort,
    ReloadDnsmasq,
    SetDhcpAddresses,
    StartDnsmasq,
    WriteFile,
)
from drivers.dhcp.model import DhcpNetworkSpec
from drivers.dhcp.naming import DEVICE_PREFIX, dhcp_device, namespace_name
from drivers.model import port_device_name
from drivers.nsdev import VethPort, veth_port_ok


def network_changes(
    prefix: str, state_dir: str, spec: DhcpNetworkSpec, a: DhcpActual | None, host: DhcpHostActual
) -> list[Change]:
    ns = namespace_name(prefix, spec.network_id)
    paths = config.paths_for(state_dir, spec.network_id)
    if not spec.served_subnets:
        if a is not None:
            return [DeleteDhcpNetwork(ns, paths.directory, a.pid, stale=False)]
        return []
    changes: list[Change] = []
    if a is None or not a.namespace_exists or not a.has_state_dir:
        changes.append(EnsureDhcpNamespace(ns, paths.directory, spec.network_id))
    device = dhcp_device(spec.dhcp_port.port_id)
    veth = VethPort(
        port_id=spec.dhcp_port.port_id,
        tap=port_device_name(spec.dhcp_port.port_id),
        inner=device,
        mac=spec.dhcp_port.mac,
        mtu=spec.mtu,
        bridge=spec.bridge,
        up=True,
    )
    links = a.links if a is not None else {}
    if not veth_port_ok(veth, links.get(device), host.taps.get(veth.tap), host.bridges):
        changes.append(EnsureDhcpPort(ns, veth))
    for name in sorted(links):
        if name.startswith(DEVICE_PREFIX) and name != device:
            changes.append(DeleteDhcpDevice(ns, name))
    want = frozenset(spec.dhcp_port.ips)
    have = (
        a.addresses.get(device, frozenset()) if a is not None and device in links else frozenset()
    )
    if want != have:
        changes.append(
            SetDhcpAddresses(ns, device, tuple(sorted(want - have)), tuple(sorted(have - want)))
        )
    hosts, opts = config.render_hosts(spec), config.render_opts(spec)
    if a is None or a.hosts != hosts:
        changes.append(WriteFile(paths.file(config.HOSTS), hosts))
    if a is None or a.opts != opts:
        changes.append(WriteFile(paths.file(config.OPTS), opts))
    digest = config.content_digest(hosts, opts)
    argv = config.dnsmasq_argv(spec, paths, device)
    pid = a.pid if a is not None else None
    if pid is None or a is None or a.cmdline != argv:
        changes.append(StartDnsmasq(ns, paths.directory, argv, digest, old_pid=pid))
    elif a.loaded != f"{pid} {digest}":
        changes.append(ReloadDnsmasq(paths.directory, pid, digest))
    return changes


def diff(
    prefix: str, state_dir: str, desired: Mapping[str, DhcpNetworkSpec], actual: DhcpHostActual
) -> Plan:
    changes: list[Change] = []
    for net_id in sorted(desired):
        a = actual.networks.get(net_id)
        changes.extend(network_changes(prefix, state_dir, desired[net_id], a, actual))
    for net_id in sorted(set(actual.networks) - set(desired)):
        a = actual.networks[net_id]
        directory = config.paths_for(state_dir, net_id).directory
        changes.append(DeleteDhcpNetwork(a.namespace, directory, a.pid, stale=True))
    return Plan(tuple(changes))
