"""Routers and floating IPs with two controllers on one etcd prefix: every race ends in
a state Neutron's rules allow (no dangling interface, association or router)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.support.controller import Env, StartEnv, failure_of
from tests.support.l3 import L3, topology

ROUNDS = 8


async def two(start_env: StartEnv) -> tuple[Env, Env]:
    return await start_env(), await start_env()


def outcome(results: list[Any]) -> list[str]:
    """ "ok" or the failure reason of each result of gather(..., return_exceptions=True)."""
    out = []
    for r in results:
        if isinstance(r, BaseException):
            if not hasattr(r, "code"):
                raise r
            out.append(failure_of(r).reason)
        else:
            out.append("ok")
    return out


async def test_one_floating_ip_per_fixed_ip_across_controllers(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    t = await topology(a)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    la, lb = L3(a, a.p1), L3(b, b.p1)
    for _ in range(ROUNDS):
        vm = await a.p1.port(t.net.id)
        f1, f2 = await t.p1.fip(t.ext.id), await t.p1.fip(t.ext.id)
        results = await asyncio.gather(
            la.update_fip(f1.id, port_id=vm.id),
            lb.update_fip(f2.id, port_id=vm.id),
            return_exceptions=True,
        )
        assert sorted(outcome(results)) == ["FloatingIPPortAlreadyAssociated", "ok"]
        assert len(await t.p1.list_fips(port_id=vm.id)) == 1


async def test_router_delete_races_add_interface(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    t = await topology(a)
    la, lb = L3(a, a.p1), L3(b, b.p1)
    for _ in range(ROUNDS):
        r = await t.p1.router(name="r")
        results = await asyncio.gather(
            la.delete_router(r.id),
            lb.add_interface(r.id, subnet_id=t.subnet.id),
            return_exceptions=True,
        )
        got = outcome(results)
        assert got in (["ok", "RouterNotFound"], ["RouterInUse", "ok"]), got
        ports = await a.admin.list_ports(device_id=r.id)
        routers = [x.id for x in await t.p1.list_routers()]
        if got[0] == "ok":
            assert ports == [] and r.id not in routers
        else:
            assert len(ports) == 1 and r.id in routers
            await t.p1.remove_interface(r.id, subnet_id=t.subnet.id)
            await t.p1.delete_router(r.id)


async def test_port_delete_races_association(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    t = await topology(a)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
    lb = L3(b, b.p1)
    for _ in range(ROUNDS):
        vm = await a.p1.port(t.net.id)
        fip = await t.p1.fip(t.ext.id)
        results = await asyncio.gather(
            a.p1.delete_port(vm.id),
            lb.update_fip(fip.id, port_id=vm.id),
            return_exceptions=True,
        )
        assert outcome(results)[0] == "ok"
        # Whatever the order, the deleted port has no floating IP.
        assert (await t.p1.get_fip(fip.id)).port_id == ""


async def test_interface_removal_races_association(start_env: StartEnv) -> None:
    a, b = await two(start_env)
    t = await topology(a)
    r = await t.p1.router(name="r", external_gateway_info={"network_id": t.ext.id})
    la, lb = L3(a, a.p1), L3(b, b.p1)
    vm = await a.p1.port(t.net.id)
    fip = await t.p1.fip(t.ext.id)
    for _ in range(ROUNDS):
        await t.p1.add_interface(r.id, subnet_id=t.subnet.id)
        results = await asyncio.gather(
            la.remove_interface(r.id, subnet_id=t.subnet.id),
            lb.update_fip(fip.id, port_id=vm.id),
            return_exceptions=True,
        )
        got = outcome(results)
        assert got in (
            ["ok", "ExternalGatewayForFloatingIPNotFound"],
            ["RouterInterfaceInUseByFloatingIP", "ok"],
        ), got
        current = await t.p1.get_fip(fip.id)
        interfaces = await a.p1.list_ports(device_id=r.id)
        # An associated floating IP always has its router interface.
        assert bool(current.router_id) == bool(interfaces)
        if current.router_id:
            await t.p1.update_fip(fip.id, port_id="")
            await t.p1.remove_interface(r.id, subnet_id=t.subnet.id)
