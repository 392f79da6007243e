"""Two controllers on one etcd prefix: uniqueness, exact exhaustion, read-your-writes.

Every uniqueness rule must hold across controllers, because each one only knows
what its watch-fed cache has seen; etcd transactions are the arbiter.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import Any

import grpc

from baryon.v1 import port_pb2
from tests.support.controller import (
    Env,
    StartEnv,
    StatusCode,
    etcd_state,
    expect_error,
    failure_of,
    index_keys,
    ips_of,
)


async def two(start_env: StartEnv, **config: Any) -> tuple[Env, Env]:
    return await start_env(**config), await start_env(**config)


def split(results: list[Any]) -> tuple[list[Any], list[grpc.aio.AioRpcError]]:
    """Successes and gRPC failures of gather(..., return_exceptions=True); anything else
    (a test bug, a timeout) is raised."""
    ok, failed = [], []
    for r in results:
        if isinstance(r, grpc.aio.AioRpcError):
            failed.append(r)
        elif isinstance(r, BaseException):
            raise r
        else:
            ok.append(r)
    return ok, failed


def reasons(failed: list[grpc.aio.AioRpcError]) -> Counter[tuple[str, str]]:
    return Counter((f.code.name, f.reason) for f in map(failure_of, failed))


def pool_addresses(subnet: Any) -> set[str]:
    out: set[str] = set()
    for pool in subnet.allocation_pools:
        start, end = ipaddress.ip_address(pool.start), ipaddress.ip_address(pool.end)
        out |= {str(start + i) for i in range(int(end) - int(start) + 1)}
    return out


async def test_port_ip_race_is_exact(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    net = await a.p1.network(name="n")
    subnet = await a.p1.subnet(net.id, "10.0.0.0/27")
    pool = pool_addresses(subnet)
    assert len(pool) == 29  # .1 is the gateway, .0 and .31 are not usable
    per_controller = 24  # 48 requests for 29 addresses
    tasks = [env.p1.port(net.id, name=f"{i}") for env in (a, b) for i in range(per_controller)]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))

    ips = [ip for port in ok for ip in ips_of(port)]
    assert len(ips) == len(set(ips)), "an address was handed out twice"
    assert len(ok) == len(pool) and set(ips) == pool
    assert reasons(failed) == Counter(
        {("RESOURCE_EXHAUSTED", "IpAddressGenerationFailure"): 2 * per_controller - len(pool)}
    )
    assert len({p.mac_address for p in ok}) == len(ok)
    # Both controllers agree on the result.
    expected = {(p.id, ips_of(p)[0]) for p in ok}
    for env in (a, b):
        listed = await env.p1.list_ports(network_id=net.id)
        assert {(p.id, ips_of(p)[0]) for p in listed} == expected
    # So does etcd: one index key per address, naming the port that holds it.
    assert await index_keys(a, f"ip/{subnet.id}/") == {ip: pid for pid, ip in expected}
    assert len(await index_keys(a, f"mac/{net.id}/")) == len(ok)
    assert set(await index_keys(a, f"netport/{net.id}/")) == {p.id for p in ok}
    state = await etcd_state(a)
    port_keys = [k for k in state if k.startswith(f"{a.prefix}r/port/".encode())]
    assert len(port_keys) == len(ok)
    # Exactly one default group came out of the race to create it.
    assert len(await index_keys(a, "sgdefault/")) == 1
    assert len({p.security_groups.ids[0] for p in ok}) == 1


async def test_duplicate_mac_race(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    net = await a.p1.network(name="n")
    await a.p1.subnet(net.id, "10.0.0.0/24")
    await a.p1.list_sgs()  # the default group exists: the race is about the MAC only
    macs = [f"fa:16:3e:00:10:{i:02x}" for i in range(8)]
    tasks = [env.p1.port(net.id, mac_address=mac) for mac in macs for env in (a, b)]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert sorted(p.mac_address for p in ok) == macs
    assert reasons(failed) == Counter({("ALREADY_EXISTS", "MacAddressInUse"): len(macs)})
    assert await index_keys(a, f"mac/{net.id}/") == {p.mac_address: p.id for p in ok}
    assert len(await b.p1.list_ports()) == len(macs)


async def test_same_fixed_ip_race(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    net = await a.p1.network(name="n")
    subnet = await a.p1.subnet(net.id, "10.0.0.0/24")
    await a.p1.list_sgs()
    wanted = [f"10.0.0.{i}" for i in range(100, 108)]
    tasks = [
        env.p1.ports.CreatePort(
            port_pb2.CreatePortRequest(
                port=port_pb2.Port(
                    network_id=net.id,
                    fixed_ips=port_pb2.FixedIPList(ips=[port_pb2.FixedIP(ip_address=ip)]),
                )
            )
        )
        for ip in wanted
        for env in (a, b)
    ]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert sorted(ips_of(p)[0] for p in ok) == wanted
    assert reasons(failed) == Counter({("ALREADY_EXISTS", "IpAddressInUse"): len(wanted)})
    assert set(await index_keys(a, f"ip/{subnet.id}/")) == set(wanted)


async def test_provider_segment_race(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    ids = list(range(150, 158))
    tasks = [
        env.admin.network(
            provider_network_type="vlan",
            provider_physical_network="physnet1",
            provider_segmentation_id=vid,
        )
        for vid in ids
        for env in (a, b)
    ]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert sorted(n.provider_segmentation_id for n in ok) == ids
    assert reasons(failed) == Counter({("ALREADY_EXISTS", "VlanIdInUse"): len(ids)})
    assert await index_keys(a, "seg/vlan/physnet1/") == {
        str(n.provider_segmentation_id): n.id for n in ok
    }
    assert len(await b.admin.list_networks()) == len(ids)


async def test_tenant_segment_race_is_exact(start_env: StartEnv) -> None:
    a, b = await two(start_env, ml2={"vni_ranges": ["10:14"]})
    tasks = [env.p1.network(name=f"{i}") for env in (a, b) for i in range(6)]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert sorted(n.provider_segmentation_id for n in ok) == [10, 11, 12, 13, 14]
    assert reasons(failed) == Counter({("RESOURCE_EXHAUSTED", "NoNetworkAvailable"): 7})
    assert len(await index_keys(a, "seg/vxlan/-/")) == 5


async def test_quota_race_is_exact(start_env: StartEnv) -> None:
    """Quotas hold across controllers: each resource takes a unique quota slot key."""
    quotas = {
        "network": 3,
        "subnet": 100,
        "port": 4,
        "security_group": 10,
        "security_group_rule": 100,
    }
    a, b = await two(start_env, quotas=quotas)
    tasks = [env.p1.network(name=f"n{i}") for env in (a, b) for i in range(5)]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert len(ok) == 3
    assert reasons(failed) == Counter({("RESOURCE_EXHAUSTED", "OverQuota"): 7})
    assert len(await index_keys(a, "q/p1/network/")) == 3
    # Deleting frees a slot for the next create, on either controller.
    await a.p1.delete_network(ok[0].id)
    await b.p1.network(name="again")
    await expect_error(b.p1.network(name="over"), StatusCode.RESOURCE_EXHAUSTED, "OverQuota")
    net = ok[1]
    await a.p1.subnet(net.id, "10.9.0.0/24")
    ports = [env.p1.port(net.id) for env in (a, b) for _ in range(4)]
    ok, failed = split(await asyncio.gather(*ports, return_exceptions=True))
    assert len(ok) == 4
    assert reasons(failed) == Counter({("RESOURCE_EXHAUSTED", "OverQuota"): 4})


async def test_default_group_race(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    results = await asyncio.gather(*(env.p1.list_sgs() for env in (a, b) for _ in range(4)))
    ids = {g.id for groups in results for g in groups}
    assert len(ids) == 1, results
    assert len(await index_keys(a, "sgdefault/")) == 1
    assert len(await index_keys(a, f"sgrule/{ids.pop()}/")) == 4


async def test_conditional_update_race(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    net = await a.p1.network(name="v1")
    tasks = [
        env.p1.update_network(net.id, if_revision=1, name=f"by-{i}")
        for i, env in enumerate((a, b, a, b))
    ]
    ok, failed = split(await asyncio.gather(*tasks, return_exceptions=True))
    assert len(ok) == 1 and ok[0].revision_number == 2
    assert reasons(failed) == Counter({("ABORTED", "RevisionNumberConstraintFailed"): 3})
    assert (await b.p1.get_network(net.id)).name == ok[0].name


async def test_delete_network_races_port_create(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    await a.p1.list_sgs()
    for _ in range(6):
        net = await a.p1.network(name="n")
        await a.p1.subnet(net.id, "10.0.0.0/24")
        deleted, port = await asyncio.gather(
            a.p1.delete_network(net.id), b.p1.port(net.id), return_exceptions=True
        )
        if isinstance(port, grpc.aio.AioRpcError):
            # The network went first: the port found no network.
            assert deleted is None
            assert failure_of(port).reason == "NetworkNotFound"
        else:
            # The port came first: the network is in use.
            assert isinstance(deleted, grpc.aio.AioRpcError), "network deleted under a port"
            assert failure_of(deleted).reason == "NetworkInUse"
            await b.p1.delete_port(port.id)
            await b.p1.delete_network(net.id)
        for env in (a, b):
            assert await env.p1.list_ports() == []
            assert await env.p1.list_networks() == []
    assert {k for k in await etcd_state(a) if b"r/port/" in k or b"r/network/" in k} == set()


async def test_read_your_writes_across_controllers(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    for i in range(10):
        net = await a.p1.network(name=f"n{i}")
        # B's read barrier makes the new network visible at once.
        assert (await b.p1.get_network(net.id)).id == net.id
        assert net.id in {n.id for n in await b.p1.list_networks()}
        # Writes on B that depend on it see it too (no spurious NOT_FOUND).
        subnet = await b.p1.subnet(net.id, "10.0.0.0/30")  # a single address: .2
        port = await a.p1.port(net.id)
        assert ips_of(port) == ["10.0.0.2"]
        # A revision just written on A is current for B.
        renamed = await a.p1.update_network(net.id, name="renamed")
        await b.p1.update_network(net.id, if_revision=renamed.revision_number, name="again")
        # An address released on B is free on A at once.
        await b.p1.delete_port(port.id)
        again = await a.p1.port(net.id)
        assert ips_of(again) == ["10.0.0.2"]
        await b.p1.delete_port(again.id)
        await a.p1.delete_subnet(subnet.id)
        await b.p1.delete_network(net.id)
        await expect_error(a.p1.get_network(net.id), StatusCode.NOT_FOUND, "NetworkNotFound")


async def test_read_your_writes_on_one_controller(start_env: StartEnv) -> None:
    env = await start_env()
    for i in range(10):
        sg = await env.p1.sg(name=f"g{i}")
        assert len(sg.rules) == 2  # the response shows the rules made with it
        net = await env.p1.network(name=f"n{i}")
        subnet = await env.p1.subnet(net.id, "10.0.0.0/30")
        updated = await env.p1.update_network(net.id, name="x")
        assert list(updated.subnets) == [subnet.id]
        port = await env.p1.port(net.id, security_groups=port_pb2.SecurityGroupIdList(ids=[sg.id]))
        await env.p1.delete_port(port.id)
        await env.p1.delete_sg(sg.id)
        assert ips_of(await env.p1.port(net.id)) == ips_of(port)
