"""The ``baryon`` CLI without a server: command lines -> requests, output, errors."""

from __future__ import annotations

import io
import json
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from baryon.v1 import network_pb2, port_pb2, security_group_pb2, subnet_pb2
from cli import main as cli_main
from cli.client import (
    ApiError,
    CliError,
    Settings,
    UsageError,
    error_from_rpc,
    find_token,
    format_api_error,
    state_dir,
)
from cli.main import build_parser, build_request, dispatch_target, execute
from cli.networks import NETWORK
from cli.output import Output, render_table
from cli.resource import ApiResolver, LookupFailed, Resource
from cli.security_groups import RULE, SECURITY_GROUP

UUID = "3f2a6c1e-1111-4222-8333-944455556666"


class FakeResolver:
    """Resolves every reference to "<ref>-id"; `current` is what `set` starts from."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def find(self, resource: Resource, ref: str, project: str = "") -> Message:
        self.calls.append((resource.title, ref, project))
        return resource.message(id=f"{ref}-id")


def request(argv: str, current: Message | None = None) -> Any:
    return build_request(argv.split(), FakeResolver(), current)


def mask(req: Any) -> list[str]:
    return list(req.update_mask.paths)


# ---------------------------------------------------------------------------
# network


def test_network_create_all_options() -> None:
    req = request(
        "network create net1 --description d --project p1 --share --external"
        " --provider-network-type vlan --provider-physical-network physnet1"
        " --provider-segment 101 --mtu 1450 --disable-port-security --disable --tag a --tag b"
    )
    assert isinstance(req, network_pb2.CreateNetworkRequest)
    net = req.network
    assert (net.name, net.description, net.project_id) == ("net1", "d", "p1")
    assert net.shared and net.external
    assert (net.provider_network_type, net.provider_physical_network) == ("vlan", "physnet1")
    assert (net.provider_segmentation_id, net.mtu) == (101, 1450)
    assert net.HasField("port_security_enabled") and not net.port_security_enabled
    assert net.HasField("admin_state_up") and not net.admin_state_up
    assert list(net.tags) == ["a", "b"]


def test_network_create_leaves_defaults_unset() -> None:
    net = request("network create net1").network
    for name in ("shared", "external", "mtu", "admin_state_up", "port_security_enabled"):
        assert not net.HasField(name), name
    assert net.ListFields()[0][0].name == "name" and len(net.ListFields()) == 1


def test_network_set_mask_is_exactly_the_given_fields() -> None:
    req = request("network set X --name y --no-share")
    assert isinstance(req, network_pb2.UpdateNetworkRequest)
    assert mask(req) == ["name", "shared"]
    assert req.network.id == "X-id"
    assert req.network.name == "y"
    assert req.network.HasField("shared") and req.network.shared is False
    assert req.if_revision == 0


def test_network_set_more_fields_and_if_revision() -> None:
    req = request("network set X --external --mtu 9000 --enable --if-revision 7")
    assert mask(req) == ["external", "mtu", "admin_state_up"]
    assert req.network.external and req.network.mtu == 9000 and req.network.admin_state_up
    assert req.if_revision == 7


def test_network_set_tag_adds_to_stored_tags_at_their_revision() -> None:
    current = network_pb2.Network(id="n1", tags=["a", "b"], revision_number=4)
    req = request("network set X --tag b --tag c", current)
    assert req.network.id == "n1"
    assert list(req.network.tags) == ["a", "b", "c"]
    assert mask(req) == ["tags"]
    assert req.if_revision == 4  # read-modify-write is conditional


def test_network_set_no_tag_replaces_tags() -> None:
    current = network_pb2.Network(id="n1", tags=["a"], revision_number=4)
    assert list(request("network set X --no-tag --tag z", current).network.tags) == ["z"]
    cleared = request("network set X --no-tag", current)
    assert mask(cleared) == ["tags"] and list(cleared.network.tags) == []
    assert cleared.if_revision == 0


def test_network_set_without_changes_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        request("network set X")


def test_network_list_filters() -> None:
    req = request("network list --project p --name n --tags a,b --any-tags c --share --internal")
    assert isinstance(req, network_pb2.ListNetworksRequest)
    assert (req.project_id, req.name) == ("p", "n")
    assert list(req.tags) == ["a", "b"] and list(req.tags_any) == ["c"]
    assert req.HasField("shared") and req.shared
    assert req.HasField("external") and not req.external


def test_network_delete_and_show_requests() -> None:
    delete = request("network delete X --if-revision 3")
    assert isinstance(delete, network_pb2.DeleteNetworkRequest)
    assert (delete.id, delete.if_revision) == ("X-id", 3)
    show = request("network show X")
    assert isinstance(show, network_pb2.GetNetworkRequest) and show.id == "X-id"


def test_flag_conflicts_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ("network create n --share --no-share", "network create", "network set"):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv.split())
        assert exc.value.code == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------
# subnet


def test_subnet_create_options() -> None:
    resolver = FakeResolver()
    req = build_request(
        [
            "subnet", "create", "sub1", "--network", "net1", "--subnet-range", "10.0.0.0/24",
            "--ip-version", "4", "--gateway", "none",
            "--allocation-pool", "start=10.0.0.10,end=10.0.0.20",
            "--allocation-pool", "start=10.0.0.30,end=10.0.0.40",
            "--dns-nameserver", "1.1.1.1", "--dns-nameserver", "8.8.8.8",
            "--host-route", "destination=192.168.0.0/16,gateway=10.0.0.254",
            "--no-dhcp", "--project", "p1",
        ],
        resolver,
    )  # fmt: skip
    assert isinstance(req, subnet_pb2.CreateSubnetRequest)
    sub = req.subnet
    assert (sub.name, sub.network_id, sub.cidr, sub.ip_version) == (
        "sub1",
        "net1-id",
        "10.0.0.0/24",
        4,
    )
    assert sub.HasField("gateway_ip") and sub.gateway_ip == ""
    assert [(p.start, p.end) for p in sub.allocation_pools] == [
        ("10.0.0.10", "10.0.0.20"),
        ("10.0.0.30", "10.0.0.40"),
    ]
    assert list(sub.dns_nameservers) == ["1.1.1.1", "8.8.8.8"]
    assert [(r.destination, r.nexthop) for r in sub.host_routes] == [
        ("192.168.0.0/16", "10.0.0.254")
    ]
    assert sub.HasField("enable_dhcp") and not sub.enable_dhcp
    # The network was looked up within the command's --project.
    assert resolver.calls == [("network", "net1", "p1")]


def test_subnet_gateway_auto_and_ip() -> None:
    base = "subnet create s --network n --subnet-range 2001:db8::/64"
    auto = request(base + " --gateway auto --ipv6-ra-mode slaac --ipv6-address-mode slaac")
    assert not auto.subnet.HasField("gateway_ip")
    assert (auto.subnet.ipv6_ra_mode, auto.subnet.ipv6_address_mode) == ("slaac", "slaac")
    assert request(base + " --gateway 2001:db8::1").subnet.gateway_ip == "2001:db8::1"


def test_subnet_set() -> None:
    current = subnet_pb2.Subnet(id="s1", dns_nameservers=["1.1.1.1"], revision_number=2)
    req = request("subnet set s --dns-nameserver 9.9.9.9 --gateway none --dhcp", current)
    assert mask(req) == ["gateway_ip", "dns_nameservers", "enable_dhcp"]
    assert list(req.subnet.dns_nameservers) == ["1.1.1.1", "9.9.9.9"]
    assert req.subnet.gateway_ip == "" and req.subnet.enable_dhcp
    cleared = request("subnet set s --no-dns-nameservers --no-host-route", current)
    assert mask(cleared) == ["dns_nameservers", "host_routes"]
    assert not cleared.subnet.dns_nameservers and not cleared.subnet.host_routes
    with pytest.raises(UsageError):
        request("subnet set s --gateway auto", current)


def test_subnet_list_filters() -> None:
    req = request("subnet list --network n --ip-version 6 --subnet-range 10.0.0.0/8")
    assert (req.network_id, req.ip_version, req.cidr) == ("n-id", 6, "10.0.0.0/8")


@pytest.mark.parametrize(
    "argv",
    [
        "--allocation-pool start=10.0.0.1",
        "--allocation-pool start=1,end=2,foo=3",
        "--host-route destination=10.0.0.0/8",
        "--ip-version 5",
    ],
)
def test_subnet_bad_values_are_usage_errors(argv: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        request("subnet create s --network n --subnet-range 10.0.0.0/24 " + argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# port


def test_port_create_wrappers_absent_unless_given() -> None:
    port = request("port create p --network n").port
    assert not port.HasField("fixed_ips")
    assert not port.HasField("security_groups")


def test_port_create_no_security_group_is_present_but_empty() -> None:
    port = request("port create p --network n --no-security-group --no-fixed-ip").port
    assert port.HasField("security_groups") and list(port.security_groups.ids) == []
    assert port.HasField("fixed_ips") and list(port.fixed_ips.ips) == []


def test_port_create_fixed_ips_and_more() -> None:
    req = request(
        "port create p --network n --fixed-ip subnet=s1,ip-address=10.0.0.5"
        " --fixed-ip subnet=s2 --fixed-ip ip-address=10.0.1.9 --mac-address fa:16:3e:00:00:01"
        " --device vm1 --device-owner compute:nova --security-group web --security-group db"
        " --disable-port-security --allowed-address ip-address=10.0.9.0/24"
        " --allowed-address ip-address=10.0.9.9,mac-address=fa:16:3e:00:00:02"
        " --host node1 --vnic-type normal --binding-profile a=b --binding-profile c=d=e"
        " --disable --tag t"
    )
    assert isinstance(req, port_pb2.CreatePortRequest)
    port = req.port
    assert port.network_id == "n-id"
    assert [(ip.subnet_id, ip.ip_address) for ip in port.fixed_ips.ips] == [
        ("s1-id", "10.0.0.5"),
        ("s2-id", ""),
        ("", "10.0.1.9"),
    ]
    assert list(port.security_groups.ids) == ["web-id", "db-id"]
    assert (port.mac_address, port.device_id, port.device_owner) == (
        "fa:16:3e:00:00:01",
        "vm1",
        "compute:nova",
    )
    assert port.HasField("port_security_enabled") and not port.port_security_enabled
    assert [(a.ip_address, a.mac_address) for a in port.allowed_address_pairs] == [
        ("10.0.9.0/24", ""),
        ("10.0.9.9", "fa:16:3e:00:00:02"),
    ]
    assert (port.binding_host_id, port.binding_vnic_type) == ("node1", "normal")
    assert dict(port.binding_profile) == {"a": "b", "c": "d=e"}
    assert not port.admin_state_up and list(port.tags) == ["t"]


@pytest.mark.parametrize(
    "bad", ["subnet", "subnet=", "ip=10.0.0.1", "subnet=a,subnet=b", "ip-address=1,bogus=2"]
)
def test_port_fixed_ip_syntax(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        request(f"port create p --network n --fixed-ip {bad}")
    assert exc.value.code == 2
    assert "--fixed-ip" in capsys.readouterr().err


def test_port_set_merges_lists_and_maps() -> None:
    current = port_pb2.Port(
        id="p1",
        revision_number=9,
        fixed_ips=port_pb2.FixedIPList(
            ips=[port_pb2.FixedIP(subnet_id="s0", ip_address="1.1.1.1")]
        ),
        security_groups=port_pb2.SecurityGroupIdList(ids=["default-id"]),
        binding_profile={"a": "1", "b": "2"},
    )
    req = request(
        "port set p --fixed-ip subnet=s1 --security-group web --binding-profile b=3", current
    )
    assert mask(req) == ["fixed_ips", "security_groups", "binding_profile"]
    assert [(ip.subnet_id, ip.ip_address) for ip in req.port.fixed_ips.ips] == [
        ("s0", "1.1.1.1"),
        ("s1-id", ""),
    ]
    assert list(req.port.security_groups.ids) == ["default-id", "web-id"]
    assert dict(req.port.binding_profile) == {"a": "1", "b": "3"}
    assert req.if_revision == 9


def test_port_set_replace_and_clear() -> None:
    current = port_pb2.Port(id="p1", security_groups=port_pb2.SecurityGroupIdList(ids=["x"]))
    replaced = request("port set p --no-security-group --security-group web", current)
    assert list(replaced.port.security_groups.ids) == ["web-id"]
    cleared = request("port set p --no-security-group --no-binding-profile --name q", current)
    assert mask(cleared) == ["name", "security_groups", "binding_profile"]
    assert cleared.port.HasField("security_groups") and not cleared.port.security_groups.ids
    assert cleared.if_revision == 0


def test_port_list_filters() -> None:
    req = request(
        "port list --network n --device-id d --device-owner o --host h"
        " --mac-address m --fixed-ip subnet=s,ip-address=10.0.0.1 --status ACTIVE"
    )
    assert isinstance(req, port_pb2.ListPortsRequest)
    assert (req.network_id, req.device_id, req.device_owner, req.binding_host_id) == (
        "n-id",
        "d",
        "o",
        "h",
    )
    assert (req.mac_address, req.fixed_ip_subnet_id, req.fixed_ip_address) == (
        "m",
        "s-id",
        "10.0.0.1",
    )
    assert req.status == "ACTIVE"


# ---------------------------------------------------------------------------
# security groups and rules


def test_security_group_create_and_set() -> None:
    req = request("security group create web --description d --stateless --project p")
    assert isinstance(req, security_group_pb2.CreateSecurityGroupRequest)
    sg = req.security_group
    assert (sg.name, sg.description, sg.project_id) == ("web", "d", "p")
    assert sg.HasField("stateful") and not sg.stateful
    upd = request("security group set web --stateful --description e")
    assert mask(upd) == ["description", "stateful"]


def test_rule_create_dst_port_range() -> None:
    req = request("security group rule create web --protocol tcp --dst-port 22:23")
    assert isinstance(req, security_group_pb2.CreateSecurityGroupRuleRequest)
    rule = req.security_group_rule
    assert rule.security_group_id == "web-id"
    assert (rule.port_range_min, rule.port_range_max) == (22, 23)
    assert (rule.direction, rule.protocol, rule.ethertype) == ("ingress", "tcp", "")
    single = request("security group rule create web --protocol udp --dst-port 53 --egress")
    rule = single.security_group_rule
    assert (rule.port_range_min, rule.port_range_max, rule.direction) == (53, 53, "egress")


def test_rule_create_icmp_remote_and_ethertype_inference() -> None:
    rule = request(
        "security group rule create web --protocol icmp --icmp-type 8 --icmp-code 0"
        " --remote-group other --description ping"
    ).security_group_rule
    assert rule.HasField("port_range_min") and rule.port_range_min == 8
    assert rule.HasField("port_range_max") and rule.port_range_max == 0
    assert (rule.remote_group_id, rule.description) == ("other-id", "ping")
    v6 = request("security group rule create web --remote-ip ::/0 --protocol any")
    assert v6.security_group_rule.ethertype == "IPv6"
    assert v6.security_group_rule.protocol == ""
    assert v6.security_group_rule.remote_ip_prefix == "::/0"
    icmp6 = request("security group rule create web --protocol icmpv6")
    assert icmp6.security_group_rule.ethertype == "IPv6"
    explicit = request("security group rule create web --ethertype IPv4 --remote-ip ::/0")
    assert explicit.security_group_rule.ethertype == "IPv4"


@pytest.mark.parametrize(
    "argv",
    [
        "--dst-port 22 --icmp-type 8",
        "--icmp-code 0",
        "--remote-ip 10.0.0.0/8 --remote-group g",
    ],
)
def test_rule_create_conflicts(argv: str) -> None:
    with pytest.raises(UsageError):
        request("security group rule create web " + argv)


@pytest.mark.parametrize("bad", ["23:22", "x", "70000", "1:2:3", "-1"])
def test_rule_dst_port_syntax(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["security", "group", "rule", "create", "g", f"--dst-port={bad}"])
    assert exc.value.code == 2
    capsys.readouterr()


def test_rule_list_and_no_set() -> None:
    req = request("security group rule list web --egress --protocol tcp")
    assert isinstance(req, security_group_pb2.ListSecurityGroupRulesRequest)
    assert (req.security_group_id, req.direction, req.protocol) == ("web-id", "egress", "tcp")
    everything = request("security group rule list")
    assert everything.security_group_id == "" and everything.direction == ""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["security", "group", "rule", "set", "r"])


# ---------------------------------------------------------------------------
# output

NET = network_pb2.Network(
    id="9b1c",
    name="net1",
    project_id="p1",
    tags=["a", "b"],
    revision_number=3,
    admin_state_up=True,
    status="ACTIVE",
    shared=False,
    mtu=1450,
    subnets=["s1", "s2"],
)
NET.created_at.FromSeconds(1_700_000_000)


def rendered(fmt: str = "table", columns: Sequence[str] = ()) -> tuple[Output, io.StringIO]:
    out = io.StringIO()
    return Output(fmt, columns, out), out


def test_show_table() -> None:
    output, out = rendered(columns=["id", "name", "admin_state_up", "subnets", "created_at"])
    output.show(NET)
    assert out.getvalue() == (
        "+----------------+----------------------+\n"
        "| Field          | Value                |\n"
        "+----------------+----------------------+\n"
        "| id             | 9b1c                 |\n"
        "| name           | net1                 |\n"
        "| admin_state_up | UP                   |\n"
        "| subnets        | s1                   |\n"
        "|                | s2                   |\n"
        "| created_at     | 2023-11-14T22:13:20Z |\n"
        "+----------------+----------------------+\n"
    )


def test_show_all_fields_in_order() -> None:
    output, out = rendered()
    output.show(NET)
    names = [line.split("|")[1].strip() for line in out.getvalue().splitlines()[3:-1]]
    names = [n for n in names if n]
    assert names == [f.name for f in network_pb2.Network.DESCRIPTOR.fields]
    assert "| provider_segmentation_id  |" in out.getvalue()


def test_show_json_and_value() -> None:
    output, out = rendered("json")
    output.show(NET)
    data = json.loads(out.getvalue())
    assert data["name"] == "net1" and data["tags"] == ["a", "b"]
    assert data["revision_number"] == "3"  # int64 in proto JSON
    assert data["description"] == ""  # fields without presence are always printed
    output, out = rendered("value", ["id", "subnets"])
    output.show(NET)
    assert out.getvalue() == "9b1c\ns1 s2\n"


def test_list_table_default_and_selected_columns() -> None:
    other = network_pb2.Network(id="77", name="ネット")
    output, out = rendered()
    output.list([NET, other], NETWORK.columns)
    assert out.getvalue() == (
        "+------+--------+---------+\n"
        "| ID   | Name   | Subnets |\n"
        "+------+--------+---------+\n"
        "| 9b1c | net1   | s1      |\n"
        "|      |        | s2      |\n"
        "| 77   | ネット |         |\n"
        "+------+--------+---------+\n"
    )
    output, out = rendered("value", ["Name", "mtu"])
    output.list([NET, other], [*NETWORK.columns, *NETWORK.long_columns])
    assert out.getvalue() == "net1 1450\nネット \n"
    output, out = rendered("json", ["ID"])
    output.list([NET], NETWORK.columns)
    assert json.loads(out.getvalue()) == [{"id": "9b1c"}]


def test_empty_list_and_unknown_column() -> None:
    output, out = rendered()
    output.list([], NETWORK.columns)
    assert out.getvalue() == ""
    output, _ = rendered(columns=["nope"])
    with pytest.raises(UsageError, match="unknown column 'nope'"):
        output.check_list(NETWORK.columns)


def test_nested_messages_render_inline() -> None:
    sub = subnet_pb2.Subnet(
        allocation_pools=[subnet_pb2.AllocationPool(start="10.0.0.2", end="10.0.0.9")],
        host_routes=[subnet_pb2.HostRoute(destination="0.0.0.0/0", nexthop="10.0.0.1")],
    )
    output, out = rendered("value", ["allocation_pools", "host_routes"])
    output.show(sub)
    assert out.getvalue() == "10.0.0.2-10.0.0.9\ndestination='0.0.0.0/0', gateway='10.0.0.1'\n"
    sg = security_group_pb2.SecurityGroup(
        rules=[
            security_group_pb2.SecurityGroupRule(
                id="r1", direction="ingress", protocol="tcp", port_range_min=22,
                port_range_max=22, security_group_id="sg", revision_number=1,
            )
        ]
    )  # fmt: skip
    output, out = rendered("value", ["rules"])
    output.show(sg)
    assert out.getvalue() == (
        "id='r1', direction='ingress', protocol='tcp', port_range_min='22', port_range_max='22'\n"
    )


def test_rule_list_columns() -> None:
    rule = security_group_pb2.SecurityGroupRule(
        id="r1", direction="ingress", ethertype="IPv4", protocol="tcp",
        port_range_min=22, port_range_max=23, security_group_id="sg",
    )  # fmt: skip
    ping = security_group_pb2.SecurityGroupRule(
        id="r2", direction="egress", ethertype="IPv6", protocol="icmp", port_range_min=8
    )
    output, out = rendered("value")
    output.list([rule, ping], RULE.columns)
    assert out.getvalue() == (
        "r1 tcp IPv4 0.0.0.0/0 22:23 ingress  sg\nr2 icmp IPv6 ::/0 type=8 egress  \n"
    )


def test_render_table_widths() -> None:
    assert render_table(["a"], [["x\nyy"]]).splitlines() == [
        "+----+",
        "| a  |",
        "+----+",
        "| x  |",
        "| yy |",
        "+----+",
    ]


# ---------------------------------------------------------------------------
# errors


def bad_cidr_status() -> status_pb2.Status:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message="Invalid input for cidr. Reason: bad prefix."
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="subnet.cidr", description='"10.0.0.0/33" is not a valid CIDR'
            ),
            error_details_pb2.BadRequest.FieldViolation(
                field="subnet.gateway_ip", description="Invalid input for cidr. Reason: bad prefix."
            ),
        ]
    )
    status.details.add().Pack(bad)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="InvalidInput", domain="baryon"))
    return status


def test_format_status_with_field_violations() -> None:
    assert format_api_error("INVALID_ARGUMENT", bad_cidr_status().message, bad_cidr_status()) == (
        "INVALID_ARGUMENT: Invalid input for cidr. Reason: bad prefix."
        ' (subnet.cidr: "10.0.0.0/33" is not a valid CIDR; subnet.gateway_ip) [InvalidInput]'
    )
    assert format_api_error("NOT_FOUND", "line one\nline two") == "NOT_FOUND: line one line two"


class FakeCall(grpc.RpcError, grpc.Call):
    """What a failed unary call raises."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailer: status_pb2.Status | None = None
    ) -> None:
        self._code, self._details = code, details
        self._trailer: tuple[tuple[str, str | bytes], ...] = (
            (("grpc-status-details-bin", trailer.SerializeToString()),) if trailer else ()
        )

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailer

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


SETTINGS = Settings.from_options("10.1.2.3:9696", "tok", 5, {})


def test_error_from_rpc_decodes_the_status_trailer() -> None:
    status = bad_cidr_status()
    err = error_from_rpc(
        FakeCall(grpc.StatusCode.INVALID_ARGUMENT, status.message, status), SETTINGS
    )
    assert isinstance(err, ApiError) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(err).startswith("INVALID_ARGUMENT: Invalid input for cidr.")
    assert "(subnet.cidr: " in str(err) and str(err).endswith("[InvalidInput]")
    # A trailer whose message differs from the call details is still used.
    odd = error_from_rpc(FakeCall(grpc.StatusCode.INVALID_ARGUMENT, "other", status), SETTINGS)
    assert "[InvalidInput]" in str(odd)


def test_error_from_rpc_connection_and_auth() -> None:
    down = error_from_rpc(FakeCall(grpc.StatusCode.UNAVAILABLE, "connection refused"), SETTINGS)
    assert str(down) == "cannot reach the controller at 10.1.2.3:9696: connection refused"
    late = error_from_rpc(FakeCall(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline"), SETTINGS)
    assert "within 5s" in str(late)
    no_token = Settings.from_options(None, None, None, {"BARYON_STATE_DIR": "/nonexistent"})
    denied = error_from_rpc(FakeCall(grpc.StatusCode.UNAUTHENTICATED, "no token"), no_token)
    assert str(denied) == (
        "UNAUTHENTICATED: no token; no token given and /nonexistent/admin-token does not exist"
    )


# ---------------------------------------------------------------------------
# settings


def test_state_dir_and_token(tmp_path: Path) -> None:
    assert state_dir({"BARYON_STATE_DIR": str(tmp_path)}) == tmp_path
    (tmp_path / "admin-token").write_text("secret\n")
    env = {"BARYON_STATE_DIR": str(tmp_path)}
    assert find_token(None, env).value == "secret"
    assert find_token(None, {**env, "BARYON_TOKEN": "envtok"}).value == "envtok"
    assert find_token("flag", {**env, "BARYON_TOKEN": "envtok"}).value == "flag"
    settings = Settings.from_options(None, None, None, {"BARYON_CONTROLLER": "h:1"})
    assert (settings.controller, settings.timeout) == ("h:1", 30.0)
    assert Settings.from_options(None, None, None, {}).controller == "127.0.0.1:9696"


def test_global_options_before_or_after_the_command() -> None:
    before = build_parser().parse_args(["-f", "json", "--controller", "c:1", "network", "list"])
    after = build_parser().parse_args(["network", "list", "-f", "value", "-c", "ID", "-c", "Name"])
    assert (before.format, before.controller, before.columns) == ("json", "c:1", [])
    assert (after.format, after.controller, after.columns) == ("value", None, ["ID", "Name"])


# ---------------------------------------------------------------------------
# running commands against a fake transport

Handler = Callable[[Message], Message]


class FakeTransport:
    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.requests: list[tuple[str, Message]] = []

    def call(self, method: Any, request: Message) -> Message:
        self.requests.append((method.name, request))
        return self.handlers[method.name](request)


def not_found(request: Message) -> Message:
    raise ApiError(grpc.StatusCode.NOT_FOUND, "Network could not be found.")


def networks_named(*nets: network_pb2.Network) -> Handler:
    def list_networks(request: Message) -> Message:
        assert isinstance(request, network_pb2.ListNetworksRequest)
        return network_pb2.ListNetworksResponse(
            networks=[n for n in nets if n.name == request.name]
        )

    return list_networks


def run(argv: str, transport: FakeTransport) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    ns = build_parser().parse_args(argv.split())
    rc = execute(ns, {}, out, err, transport)
    return rc, out.getvalue(), err.getvalue()


def test_resolver_by_uuid_name_and_ambiguity() -> None:
    a = network_pb2.Network(id="a", name="dup", project_id="p1")
    b = network_pb2.Network(id="b", name="dup", project_id="p2")
    c = network_pb2.Network(id=UUID, name="solo")
    transport = FakeTransport(
        {
            "GetNetwork": lambda r: c if r.id == UUID else not_found(r),  # type: ignore[attr-defined]
            "ListNetworks": networks_named(a, b, c),
        }
    )
    resolver = ApiResolver(transport)
    assert resolver.find(NETWORK, UUID) is c
    assert transport.requests[-1][0] == "GetNetwork"
    assert value(resolver.find(NETWORK, "solo"), "id") == UUID
    with pytest.raises(LookupFailed, match='more than one network is named "dup" \\(a, b\\)'):
        resolver.find(NETWORK, "dup")
    assert value(resolver.find(NETWORK, "dup", project="p2"), "id") == "b"
    with pytest.raises(LookupFailed, match='no network named "nope"'):
        resolver.find(NETWORK, "nope")


def value(msg: Message, name: str) -> Any:
    return getattr(msg, name)


def test_resolver_follows_pages() -> None:
    pages = {
        "": security_group_pb2.ListSecurityGroupsResponse(next_page_token="2"),
        "2": security_group_pb2.ListSecurityGroupsResponse(
            security_groups=[security_group_pb2.SecurityGroup(id="sg", name="web")]
        ),
    }
    transport = FakeTransport({"ListSecurityGroups": lambda r: pages[r.page_token]})  # type: ignore[attr-defined]
    assert value(ApiResolver(transport).find(SECURITY_GROUP, "web"), "id") == "sg"
    assert [value(r, "page_size") for _, r in transport.requests] == [1000, 1000]


def test_show_and_create_run_end_to_end() -> None:
    net = network_pb2.Network(id="n1", name="net1", mtu=1500)
    transport = FakeTransport(
        {
            "ListNetworks": networks_named(net),
            "CreateNetwork": lambda r: r.network,  # type: ignore[attr-defined]
        }
    )
    rc, out, err = run("network show net1 -f value -c id -c mtu", transport)
    assert (rc, out, err) == (0, "n1\n1500\n", "")
    rc, out, _ = run("network create other --mtu 1400 -f json", transport)
    assert rc == 0 and json.loads(out)["mtu"] == 1400


def test_api_errors_are_one_line_and_exit_1() -> None:
    def reject(request: Message) -> Message:
        status = bad_cidr_status()
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, status.message, status)

    transport = FakeTransport({"ListNetworks": networks_named(), "CreateSubnet": reject})
    transport.handlers["GetNetwork"] = not_found
    transport.handlers["ListNetworks"] = networks_named(network_pb2.Network(id="n", name="n"))
    rc, out, err = run("subnet create s --network n --subnet-range 10.0.0.0/33", transport)
    assert rc == 1 and out == ""
    assert (
        err.startswith("Error: INVALID_ARGUMENT: Invalid input for cidr.") and err.count("\n") == 1
    )
    rc, _, err = run("network show missing", transport)
    assert rc == 1 and err == 'Error: no network named "missing" or with that ID was found\n'
    rc, _, err = run("network set n", transport)
    assert rc == 2 and err.startswith("Error: nothing to change")


def test_delete_several_reports_each_failure() -> None:
    transport = FakeTransport(
        {
            "ListNetworks": networks_named(network_pb2.Network(id="n1", name="a")),
            "GetNetwork": not_found,
            "DeleteNetwork": lambda r: network_pb2.Network(),
        }
    )
    rc, _, err = run("network delete a b", transport)
    assert rc == 1
    assert err.splitlines() == [
        'Error: b: no network named "b" or with that ID was found',
        "Error: failed to delete 1 of 2 networks",
    ]
    deleted = [r for name, r in transport.requests if name == "DeleteNetwork"]
    assert [value(r, "id") for r in deleted] == ["n1"]


# ---------------------------------------------------------------------------
# controller / agent dispatch


def test_dispatch_target() -> None:
    assert dispatch_target(["controller", "--listen", "x"]) == ("controller", ["--listen", "x"])
    assert dispatch_target(["--token", "controller", "agent", "-v"]) == ("agent", ["-v"])
    assert dispatch_target(["network", "list"]) is None
    assert dispatch_target(["--help"]) is None


def test_dispatch_calls_main_with_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("fake_baryon_controller")

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 3

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_baryon_controller", fake)
    monkeypatch.setitem(cli_main.DISPATCH, "controller", ("fake_baryon_controller", "x"))
    assert cli_main.main(["controller", "--config", "c.toml"]) == 3
    assert seen == [["--config", "c.toml"]]


def test_dispatch_import_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli_main.DISPATCH, "agent", ("no_such_baryon_module.main", "x"))
    assert cli_main.main(["agent"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: the agent is not available: cannot import no_such_baryon")
    assert err.count("\n") == 1


def test_cli_error_exit_codes() -> None:
    assert CliError.exit_code == 1 and UsageError.exit_code == 2
