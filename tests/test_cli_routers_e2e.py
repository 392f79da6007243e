"""The real ``baryon`` command against an in-process controller: routers and floating IPs."""

from __future__ import annotations

from typing import Any

from tests.support.controller import ADMIN_TOKEN, Env
from tests.test_cli_e2e import cli  # noqa: F401  (the fixture)


async def test_router_and_floating_ip_lifecycle(env: Env, cli: Any) -> None:  # noqa: F811
    admin = {"token": ADMIN_TOKEN}
    assert (await cli("network", "create", "ext", "--external", **admin)).code == 0
    ext_subnet = (
        await cli(
            "subnet", "create", "ext-v4", "--network", "ext", "--subnet-range",
            "203.0.113.0/24", "-f", "json", **admin,
        )
    ).json()  # fmt: skip
    assert (await cli("network", "create", "int")).code == 0
    subnet = (
        await cli(
            "subnet", "create", "int-v4", "--network", "int", "--subnet-range", "10.0.0.0/24",
            "-f", "json",
        )
    ).json()  # fmt: skip
    router = (await cli("router", "create", "r1", "--external-gateway", "ext", "-f", "json")).json()
    gw = router["external_gateway_info"]
    assert gw["network_id"] == ext_subnet["network_id"] and gw["enable_snat"] is True
    assert gw["external_fixed_ips"][0]["subnet_id"] == ext_subnet["id"]

    assert (await cli("router", "add", "subnet", "r1", "int-v4")).code == 0
    (iface,) = (await cli("port", "list", "--device-id", router["id"], "-f", "json")).json()
    assert iface["fixed_ips"] == {"ips": [{"subnet_id": subnet["id"], "ip_address": "10.0.0.1"}]}

    shown = await cli(
        "router", "set", "r1", "--route", "destination=192.168.0.0/16,gateway=10.0.0.9"
    )
    assert shown.code == 0, shown.err
    router = (await cli("router", "show", "r1", "-f", "json")).json()
    assert router["routes"] == [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.9"}]

    vm = (await cli("port", "create", "vm", "--network", "int", "-f", "json")).json()
    fip = (await cli("floating", "ip", "create", "ext", "--port", "vm", "-f", "json")).json()
    assert fip["port_id"] == vm["id"] and fip["router_id"] == router["id"]
    assert fip["fixed_ip_address"] == vm["fixed_ips"]["ips"][0]["ip_address"]
    assert fip["status"] == "DOWN"

    # Refusals are one line with Neutron's reason.
    refused = await cli("router", "delete", "r1")
    assert refused.code == 1 and "[RouterInUse]" in refused.err, refused.err
    refused = await cli("router", "remove", "subnet", "r1", "int-v4")
    assert refused.code == 1 and "[RouterInterfaceInUseByFloatingIP]" in refused.err

    assert (await cli("floating", "ip", "unset", fip["id"], "--port")).code == 0
    got = (await cli("floating", "ip", "show", fip["id"], "-f", "json")).json()
    assert got["port_id"] == "" and got["router_id"] == ""
    listed = (await cli("floating", "ip", "list", "-f", "json")).json()
    assert [f["id"] for f in listed] == [fip["id"]]
    assert (await cli("floating", "ip", "set", fip["id"], "--port", "vm")).code == 0
    assert (await cli("floating", "ip", "delete", fip["id"])).code == 0

    assert (await cli("router", "set", "r1", "--no-route")).code == 0
    assert (await cli("router", "remove", "subnet", "r1", "int-v4")).code == 0
    assert (await cli("router", "unset", "r1", "--external-gateway")).code == 0
    router = (await cli("router", "show", "r1", "-f", "json")).json()
    assert "external_gateway_info" not in router or not router["external_gateway_info"]
    assert (await cli("router", "delete", "r1")).code == 0
    assert (await cli("router", "list", "-f", "json")).json() == []
