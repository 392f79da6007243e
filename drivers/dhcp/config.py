"""Pure rendering of a network's dnsmasq: command line, hosts file, options file."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass

from drivers.dhcp.model import DhcpNetworkSpec, DhcpSubnet

HOSTS = "host"
OPTS = "opts"
LEASES = "leases"
PIDFILE = "pid"
LOADED = "loaded"  # "<pid> <digest of host+opts>" once that dnsmasq has read them
LOG = "log"
MARKER = "network"  # holds the network id: a directory without it is not ours


@dataclass(frozen=True, slots=True)
class Paths:
    directory: str

    def file(self, name: str) -> str:
        return os.path.join(self.directory, name)


def paths_for(state_dir: str, network_id: str) -> Paths:
    return Paths(os.path.join(state_dir, network_id))


def tag(index: int) -> str:
    return f"subnet{index}"


def render_hosts(spec: DhcpNetworkSpec) -> str:
    """``mac,ip[,hostname]`` for every host whose IP is in a served subnet."""
    served = [ipaddress.ip_network(s.cidr) for s in spec.served_subnets]
    lines = []
    for host in spec.hosts:
        ip = ipaddress.ip_address(host.ip)
        if not any(ip in net for net in served):
            continue
        fields = [host.mac, host.ip] + ([host.hostname] if host.hostname else [])
        lines.append(",".join(fields))
    return "".join(f"{line}\n" for line in lines)


def _routes_option(subnet: DhcpSubnet) -> list[str]:
    """Option 121 (and 249, Microsoft's) values; the default route is included because a
    client given classless routes ignores option 3 (RFC 3442)."""
    if not subnet.host_routes:
        return []
    pairs = [f"{r.destination},{r.nexthop}" for r in subnet.host_routes]
    if subnet.gateway is not None and all(r.destination != "0.0.0.0/0" for r in subnet.host_routes):
        pairs.append(f"0.0.0.0/0,{subnet.gateway}")
    return pairs


def render_opts(spec: DhcpNetworkSpec) -> str:
    lines: list[str] = []
    for i, subnet in enumerate(spec.served_subnets):
        t = f"tag:{tag(i)}"
        lines.append(f"{t},option:router" + (f",{subnet.gateway}" if subnet.gateway else ""))
        lines.append(f"{t},option:dns-server" + "".join(f",{d}" for d in subnet.dns_servers))
        lines.append(f"{t},option:mtu,{spec.mtu}")
        routes = _routes_option(subnet)
        if routes:
            lines.append(f"{t},option:classless-static-route," + ",".join(routes))
            lines.append(f"{t},249," + ",".join(routes))
    return "".join(f"{line}\n" for line in lines)


def content_digest(hosts: str, opts: str) -> str:
    return hashlib.sha256(f"{hosts}\0{opts}".encode()).hexdigest()[:20]


def dnsmasq_argv(spec: DhcpNetworkSpec, paths: Paths, device: str) -> tuple[str, ...]:
    """The exact command line (compared with /proc/<pid>/cmdline on read-back: a change
    in it - served subnets, lease time, device - means a restart)."""
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--no-hosts",
        "--no-resolv",
        "--conf-file=/dev/null",
        "--port=0",
        "--bind-dynamic",
        f"--interface={device}",
        "--except-interface=lo",
        f"--pid-file={paths.file(PIDFILE)}",
        f"--dhcp-hostsfile={paths.file(HOSTS)}",
        f"--dhcp-optsfile={paths.file(OPTS)}",
        f"--dhcp-leasefile={paths.file(LEASES)}",
        "--dhcp-authoritative",
        "--dhcp-no-override",
    ]
    served = spec.served_subnets
    for i, subnet in enumerate(served):
        net = ipaddress.ip_network(subnet.cidr)
        argv.append(
            f"--dhcp-range=set:{tag(i)},{net.network_address},static,{net.netmask},"
            f"{spec.lease_time}s"
        )
    size = sum(ipaddress.ip_network(s.cidr).num_addresses for s in served)
    argv.append(f"--dhcp-lease-max={max(size, 16)}")
    return tuple(argv)
