"""``baryon router ...`` and ``baryon floating ip ...`` without a server: command lines
-> requests (names resolved to "<ref>-id" by a fake resolver)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from google.protobuf.message import Message

from baryon.v1 import floating_ip_pb2, router_pb2
from cli.client import UsageError
from cli.main import build_parser, build_request, execute
from cli.resource import Resource


class FakeResolver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def find(self, resource: Resource, ref: str, project: str = "") -> Message:
        self.calls.append((resource.title, ref))
        return resource.message(id=f"{ref}-id")


def request(argv: str, current: Message | None = None) -> Any:
    return build_request(argv.split(), FakeResolver(), current)


def custom(argv: str, current: Message | None = None) -> Any:
    """The request of an unset / add / remove command."""
    ns = build_parser().parse_args(argv.split())
    if ns.command.verb == "unset":
        return ns.command.build(ns, current)
    return ns.command.build(ns, FakeResolver())


def routes(msg: router_pb2.Router) -> list[tuple[str, str]]:
    return [(r.destination, r.nexthop) for r in msg.routes]


# --------------------------------------------------------------------------- router


def test_router_create() -> None:
    req = request("router create r1 --description d --project p1 --disable --tag a")
    assert isinstance(req, router_pb2.CreateRouterRequest)
    r = req.router
    assert (r.name, r.description, r.project_id, list(r.tags)) == ("r1", "d", "p1", ["a"])
    assert r.HasField("admin_state_up") and not r.admin_state_up
    assert not r.HasField("external_gateway_info")
    plain = request("router create r1").router
    assert not plain.HasField("admin_state_up") and not plain.HasField("external_gateway_info")


def test_router_create_with_gateway() -> None:
    r = request(
        "router create r1 --external-gateway ext --disable-snat"
        " --fixed-ip subnet=ext-v4,ip-address=203.0.113.5 --fixed-ip ip-address=203.0.113.6"
    ).router
    gw = r.external_gateway_info
    assert gw.network_id == "ext-id"
    assert gw.HasField("enable_snat") and gw.enable_snat is False
    assert [(ip.subnet_id, ip.ip_address) for ip in gw.external_fixed_ips] == [
        ("ext-v4-id", "203.0.113.5"),
        ("", "203.0.113.6"),
    ]


def test_router_set_gateway_mask() -> None:
    req = request("router set r1 --external-gateway ext", router_pb2.Router(id="r-id"))
    assert isinstance(req, router_pb2.UpdateRouterRequest)
    assert list(req.update_mask.paths) == ["external_gateway_info"]
    assert req.router.id == "r-id" and req.router.external_gateway_info.network_id == "ext-id"
    assert not req.router.external_gateway_info.HasField("enable_snat")
    req = request(
        "router set r1 --external-gateway ext --enable-snat", router_pb2.Router(id="r-id")
    )
    assert req.router.external_gateway_info.enable_snat is True


@pytest.mark.parametrize(
    "argv", ["router set r1 --disable-snat", "router create r --fixed-ip ip-address=1.2.3.4"]
)
def test_gateway_options_need_external_gateway(argv: str) -> None:
    with pytest.raises(UsageError, match="need --external-gateway"):
        request(argv, router_pb2.Router(id="r-id"))


def test_snat_flags_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            "router set r --external-gateway e --enable-snat --disable-snat".split()
        )
    assert "not allowed with argument" in capsys.readouterr().err


def test_router_set_routes_merge_and_replace() -> None:
    stored = router_pb2.Router(
        id="r-id",
        revision_number=4,
        routes=[router_pb2.Route(destination="10.9.0.0/16", nexthop="10.0.0.9")],
    )
    req = request("router set r1 --route destination=0.0.0.0/0,gateway=10.0.0.1", stored)
    assert list(req.update_mask.paths) == ["routes"]
    assert routes(req.router) == [("10.9.0.0/16", "10.0.0.9"), ("0.0.0.0/0", "10.0.0.1")]
    assert req.if_revision == 4  # read-modify-write at the stored revision
    req = request("router set r1 --no-route", stored)
    assert list(req.update_mask.paths) == ["routes"] and routes(req.router) == []
    req = request("router set r1 --no-route --route destination=1.0.0.0/8,gateway=10.0.0.2", stored)
    assert routes(req.router) == [("1.0.0.0/8", "10.0.0.2")]


def test_router_route_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args("router set r --route destination=1.0.0.0/8".split())
    assert "gateway missing" in capsys.readouterr().err


def test_router_set_name_and_state() -> None:
    req = request("router set r1 --name r2 --enable", router_pb2.Router(id="r-id"))
    assert sorted(req.update_mask.paths) == ["admin_state_up", "name"]
    assert req.router.admin_state_up is True and req.if_revision == 0


def test_router_unset() -> None:
    stored = router_pb2.Router(
        id="r-id",
        revision_number=7,
        routes=[
            router_pb2.Route(destination="10.9.0.0/16", nexthop="10.0.0.9"),
            router_pb2.Route(destination="0.0.0.0/0", nexthop="10.0.0.1"),
        ],
    )
    req = custom("router unset r1 --external-gateway", stored)
    assert isinstance(req, router_pb2.UpdateRouterRequest)
    assert list(req.update_mask.paths) == ["external_gateway_info"]
    assert not req.router.HasField("external_gateway_info") and req.if_revision == 0
    req = custom("router unset r1 --route destination=0.0.0.0/0,gateway=10.0.0.1", stored)
    assert list(req.update_mask.paths) == ["routes"]
    assert routes(req.router) == [("10.9.0.0/16", "10.0.0.9")] and req.if_revision == 7
    with pytest.raises(UsageError, match="nothing to unset"):
        custom("router unset r1", stored)


def test_router_list_show_delete() -> None:
    req = request("router list --name r1 --project p1 --tags a,b")
    assert isinstance(req, router_pb2.ListRoutersRequest)
    assert (req.name, req.project_id, list(req.tags)) == ("r1", "p1", ["a", "b"])
    assert request("router show r1") == router_pb2.GetRouterRequest(id="r1-id")
    assert request("router delete r1 --if-revision 3") == router_pb2.DeleteRouterRequest(
        id="r1-id", if_revision=3
    )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            "router add subnet r1 s1",
            router_pb2.AddRouterInterfaceRequest(router_id="r1-id", subnet_id="s1-id"),
        ),
        (
            "router add port r1 p1",
            router_pb2.AddRouterInterfaceRequest(router_id="r1-id", port_id="p1-id"),
        ),
        (
            "router remove subnet r1 s1",
            router_pb2.RemoveRouterInterfaceRequest(router_id="r1-id", subnet_id="s1-id"),
        ),
        (
            "router remove port r1 p1",
            router_pb2.RemoveRouterInterfaceRequest(router_id="r1-id", port_id="p1-id"),
        ),
    ],
)
def test_router_interfaces(argv: str, expected: Message) -> None:
    assert custom(argv) == expected


def test_router_add_runs_the_rpc() -> None:
    calls: list[tuple[str, Message]] = []

    class Transport:
        def call(self, method: Any, req: Message) -> Message:
            calls.append((method.name, req))
            if method.name == "ListRouters":
                return router_pb2.ListRoutersResponse(
                    routers=[router_pb2.Router(id="r", name="r1")]
                )
            if method.name == "ListSubnets":
                from baryon.v1 import subnet_pb2

                return subnet_pb2.ListSubnetsResponse(
                    subnets=[subnet_pb2.Subnet(id="s", name="s1")]
                )
            return router_pb2.RouterInterfaceInfo(router_id="r", subnet_id="s")

    out, err = io.StringIO(), io.StringIO()
    ns = build_parser().parse_args("router add subnet r1 s1".split())
    assert execute(ns, {}, out, err, Transport()) == 0
    assert calls[-1] == (
        "AddRouterInterface",
        router_pb2.AddRouterInterfaceRequest(router_id="r", subnet_id="s"),
    )


# --------------------------------------------------------------------------- floating ip


def test_floating_ip_create() -> None:
    req = request(
        "floating ip create ext --port vm1 --fixed-ip-address 10.0.0.5"
        " --floating-ip-address 203.0.113.9 --subnet ext-v4 --description d --project p1"
    )
    assert isinstance(req, floating_ip_pb2.CreateFloatingIPRequest)
    f = req.floating_ip
    assert (f.floating_network_id, f.port_id, f.fixed_ip_address) == (
        "ext-id",
        "vm1-id",
        "10.0.0.5",
    )
    assert (f.floating_ip_address, f.subnet_id) == ("203.0.113.9", "ext-v4-id")
    assert (f.description, f.project_id) == ("d", "p1")
    plain = request("floating ip create ext").floating_ip
    assert plain == floating_ip_pb2.FloatingIP(floating_network_id="ext-id")


def test_floating_ip_set_and_unset() -> None:
    current = floating_ip_pb2.FloatingIP(id="f-id")
    req = request("floating ip set f-id --port vm1 --fixed-ip-address 10.0.0.5", current)
    assert isinstance(req, floating_ip_pb2.UpdateFloatingIPRequest)
    assert list(req.update_mask.paths) == ["port_id", "fixed_ip_address"]
    assert (req.floating_ip.id, req.floating_ip.port_id) == ("f-id", "vm1-id")
    req = custom("floating ip unset f-id --port", current)
    assert list(req.update_mask.paths) == ["port_id"] and req.floating_ip.port_id == ""
    assert req.floating_ip.id == "f-id"


def test_floating_ip_set_has_no_create_only_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args("floating ip set f --floating-ip-address 1.2.3.4".split())
    assert "unrecognized arguments" in capsys.readouterr().err


def test_floating_ip_list_show_delete() -> None:
    req = request(
        "floating ip list --network ext --port vm1 --router r1 --status DOWN"
        " --fixed-ip-address 10.0.0.5 --floating-ip-address 203.0.113.9"
    )
    assert isinstance(req, floating_ip_pb2.ListFloatingIPsRequest)
    assert (req.floating_network_id, req.port_id, req.router_id) == ("ext-id", "vm1-id", "r1-id")
    assert (req.status, req.fixed_ip_address, req.floating_ip_address) == (
        "DOWN",
        "10.0.0.5",
        "203.0.113.9",
    )
    assert request("floating ip show f1") == floating_ip_pb2.GetFloatingIPRequest(id="f1-id")
    assert request("floating ip delete f1") == floating_ip_pb2.DeleteFloatingIPRequest(id="f1-id")
