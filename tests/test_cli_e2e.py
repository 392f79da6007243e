"""The real ``baryon`` command, as a subprocess, against an in-process controller.

The controller runs in the test's event loop, so the CLI runs through
asyncio.create_subprocess_exec (a blocking subprocess.run would starve it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.controller import ADMIN_TOKEN, P1_TOKEN, Env

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def cli(env: Env, tmp_path: Path) -> Any:
    """``await cli(*args, token=...)``: run baryon against the test's controller."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BARYON_")}
    environ["BARYON_STATE_DIR"] = str(tmp_path)  # no admin-token file there

    async def run(*args: str, token: str = P1_TOKEN) -> Run:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main",
            "--controller", env.target, "--token", token, "--timeout", "20", *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=environ,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        return Run(proc.returncode or 0, out.decode(), err.decode())

    return run


async def test_network_subnet_port_lifecycle(env: Env, cli: Any) -> None:
    net = (await cli("network", "create", "net1", "--tag", "blue", "-f", "json")).json()
    assert net["name"] == "net1" and net["project_id"] == "p1" and net["tags"] == ["blue"]
    assert net["mtu"] == 1450 and net["status"] == "ACTIVE"
    subnet = (
        await cli(
            "subnet", "create", "sub1", "--network", "net1", "--subnet-range", "10.0.0.0/24",
            "--allocation-pool", "start=10.0.0.100,end=10.0.0.150",
            "--dns-nameserver", "9.9.9.9", "-f", "json",
        )
    ).json()  # fmt: skip
    assert subnet["network_id"] == net["id"] and subnet["gateway_ip"] == "10.0.0.1"
    assert subnet["allocation_pools"] == [{"start": "10.0.0.100", "end": "10.0.0.150"}]
    port = (
        await cli(
            "port", "create", "port1", "--network", "net1",
            "--fixed-ip", "subnet=sub1,ip-address=10.0.0.10", "-f", "json",
        )
    ).json()  # fmt: skip
    assert port["fixed_ips"]["ips"] == [{"subnet_id": subnet["id"], "ip_address": "10.0.0.10"}]
    assert port["mac_address"].startswith("fa:16:3e:")
    auto = (await cli("port", "create", "port2", "--network", net["id"], "-f", "json")).json()
    assert auto["fixed_ips"]["ips"][0]["ip_address"].startswith("10.0.0.1")

    # The API sees what the CLI made.
    assert (await env.p1.get_port(port["id"])).name == "port1"

    listed = (await cli("network", "list", "-f", "json")).json()
    assert [(n["id"], n["subnets"]) for n in listed] == [(net["id"], [subnet["id"]])]
    ports = (await cli("port", "list", "--network", "net1", "-f", "json")).json()
    assert sorted(p["name"] for p in ports) == ["port1", "port2"]
    by_ip = (await cli("port", "list", "--fixed-ip", "ip-address=10.0.0.10", "-f", "json")).json()
    assert [p["id"] for p in by_ip] == [port["id"]]
    shown = (await cli("network", "show", "net1", "-f", "json")).json()
    assert shown["id"] == net["id"] and shown["subnets"] == [subnet["id"]]
    value = await cli("subnet", "show", subnet["id"], "-f", "value", "-c", "cidr")
    assert (value.code, value.out) == (0, "10.0.0.0/24\n")
    table = await cli("port", "list")
    assert table.code == 0 and "port1" in table.out and "10.0.0.10" in table.out

    # set: the update reaches the API (tags are added to the existing ones).
    done = await cli(
        "network", "set", "net1", "--name", "net2", "--description", "d", "--tag", "red"
    )
    assert (done.code, done.err) == (0, "")
    changed = await env.p1.get_network(net["id"])
    assert (changed.name, changed.description, list(changed.tags)) == ("net2", "d", ["blue", "red"])
    await cli("port", "set", "port1", "--fixed-ip", "ip-address=10.0.0.11")
    assert [ip.ip_address for ip in (await env.p1.get_port(port["id"])).fixed_ips.ips] == [
        "10.0.0.10",
        "10.0.0.11",
    ]

    for args in (("port", "delete", "port1", "port2"), ("subnet", "delete", "sub1"),
                 ("network", "delete", "net2")):  # fmt: skip
        done = await cli(*args)
        assert (done.code, done.err) == (0, ""), args
    assert await env.admin.list_networks() == []
    assert await env.admin.list_ports() == []
    assert (await cli("network", "list", "-f", "json")).json() == []


async def test_errors_are_one_line_with_field_and_exit_1(env: Env, cli: Any) -> None:
    await cli("network", "create", "net1")
    bad = await cli("subnet", "create", "s", "--network", "net1", "--subnet-range", "10.0.0.0/33")
    assert bad.code == 1 and bad.out == ""
    assert bad.err.count("\n") == 1 and bad.err.startswith("Error: INVALID_ARGUMENT")
    assert "subnet.cidr" in bad.err and "[InvalidInput]" in bad.err
    assert await env.p1.list_subnets() == []

    await cli("subnet", "create", "s", "--network", "net1", "--subnet-range", "10.0.0.0/24")
    await cli("port", "create", "p", "--network", "net1")
    in_use = await cli("network", "delete", "net1")
    assert in_use.code == 1 and in_use.err.count("\n") == 1
    assert "FAILED_PRECONDITION" in in_use.err and "[NetworkInUse]" in in_use.err
    assert len(await env.p1.list_networks()) == 1

    denied = await cli("network", "create", "x", "--provider-network-type", "vlan")
    assert denied.code == 1 and "PERMISSION_DENIED" in denied.err
    missing = await cli("network", "show", "nope")
    assert missing.code == 1 and missing.err.count("\n") == 1 and "nope" in missing.err
    unauth = await cli("network", "list", token="wrong")
    assert unauth.code == 1 and "UNAUTHENTICATED" in unauth.err

    # An admin sees every project's network by name.
    listed = (await cli("network", "list", "-f", "json", token=ADMIN_TOKEN)).json()
    assert [n["project_id"] for n in listed] == ["p1"]
