"""Controller configuration, read from a TOML file; every key has a default."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Neutron's default quotas (neutron/conf/quota.py); -1 means unlimited.
DEFAULT_QUOTAS: dict[str, int] = {
    "network": 100,
    "subnet": 100,
    "port": 500,
    "security_group": 10,
    "security_group_rule": 100,
    "router": 10,
    "floatingip": 50,
}


@dataclass
class Ml2Config:
    type_drivers: list[str] = field(
        default_factory=lambda: ["local", "flat", "vlan", "vxlan", "gre"]
    )
    tenant_network_types: list[str] = field(default_factory=lambda: ["vxlan"])
    # Neutron's global_physnet_mtu and path_mtu.
    global_physnet_mtu: int = 1500
    path_mtu: int = 1500
    physical_network_mtus: dict[str, int] = field(default_factory=dict)
    flat_networks: list[str] = field(default_factory=lambda: ["*"])
    network_vlan_ranges: list[str] = field(default_factory=lambda: ["physnet1:100:199"])
    vni_ranges: list[str] = field(default_factory=lambda: ["1:65535"])
    tunnel_id_ranges: list[str] = field(default_factory=lambda: ["1:65535"])


@dataclass
class Config:
    etcd_prefix: str = "/baryon/"
    base_mac: str = "fa:16:3e:00:00:00"
    max_dns_nameservers: int = 5
    max_subnet_host_routes: int = 20
    max_fixed_ips_per_port: int = 5
    quotas: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_QUOTAS))
    per_project_quotas: dict[str, dict[str, int]] = field(default_factory=dict)
    ml2: Ml2Config = field(default_factory=Ml2Config)
    # Agents (controller.agents): seconds a disconnected agent stays alive, the
    # per-stream queue bound, and how many recent revisions reconnects can catch up on.
    agent_lease_ttl: int = 2
    agent_queue_size: int = 256
    agent_ring_size: int = 4096
    # Scheduling (controller.scheduler): DHCP agents per DHCP-enabled network, and
    # the TTL of the scheduling leader's lease (a dead leader is replaced after it).
    dhcp_agents_per_network: int = 1
    leader_lease_ttl: int = 5

    def quota(self, project_id: str, resource: str) -> int:
        override = self.per_project_quotas.get(project_id, {})
        return override.get(resource, self.quotas.get(resource, -1))


def load_config(path: Path | None) -> Config:
    cfg = Config()
    if path is None:
        return cfg
    with open(path, "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    ml2 = data.pop("ml2", {})
    for section in ("flat", "vlan", "vxlan", "gre"):
        for key, value in ml2.pop(section, {}).items():
            ml2[key] = value
    for key, value in ml2.items():
        if not hasattr(cfg.ml2, key):
            raise ValueError(f"{path}: unknown option ml2.{key}")
        setattr(cfg.ml2, key, value)
    quotas = data.pop("quotas", {})
    cfg.per_project_quotas = quotas.pop("projects", {})
    cfg.quotas.update(quotas)
    for key, value in data.get("controller", {}).items():
        if not hasattr(cfg, key):
            raise ValueError(f"{path}: unknown option controller.{key}")
        setattr(cfg, key, value)
    return cfg


def default_state_dir() -> Path:
    env = os.environ.get("BARYON_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/baryon")
    return Path.home() / ".local" / "state" / "baryon"
