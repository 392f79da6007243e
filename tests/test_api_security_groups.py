"""SecurityGroupService against a real etcd: groups, rules, the default group."""

from __future__ import annotations

from typing import Any

import pytest

from baryon.v1 import port_pb2, security_group_pb2
from tests.support.controller import Env, StatusCode, expect_error, index_keys, unchanged

INVALID = StatusCode.INVALID_ARGUMENT


def rule_set(sg: security_group_pb2.SecurityGroup) -> set[tuple[str, str, str, str]]:
    return {(r.direction, r.ethertype, r.protocol, r.remote_group_id) for r in sg.rules}


async def test_default_group_created_lazily_on_list(env: Env) -> None:
    assert await index_keys(env, "sgdefault/") == {}
    (default,) = await env.p1.list_sgs()
    assert default.name == "default" and default.project_id == "p1"
    assert default.stateful is True
    assert rule_set(default) == {
        ("ingress", "IPv4", "", default.id),
        ("ingress", "IPv6", "", default.id),
        ("egress", "IPv4", "", ""),
        ("egress", "IPv6", "", ""),
    }
    assert all(r.security_group_id == default.id and r.project_id == "p1" for r in default.rules)
    # Listing again does not make another one; each project has its own.
    assert [g.id for g in await env.p1.list_sgs()] == [default.id]
    (other,) = await env.p2.list_sgs()
    assert other.id != default.id and other.project_id == "p2"
    assert await index_keys(env, "sgdefault/") == {"p1": default.id, "p2": other.id}
    assert await env.p1.get_sg(default.id) == default
    # An admin listing a project's groups does not give the admin project a default.
    listed = await env.admin.list_sgs(project_id="p1")
    assert [g.id for g in listed] == [default.id]
    assert "admin" not in await index_keys(env, "sgdefault/")


async def test_default_name_is_reserved(env: Env) -> None:
    await env.p1.list_sgs()
    async with unchanged(env):
        await expect_error(
            env.p1.sg(name="default"),
            StatusCode.ALREADY_EXISTS,
            "SecurityGroupDefaultAlreadyExists",
            "security_group.name",
        )
    web = await env.p1.sg(name="web")
    async with unchanged(env):
        await expect_error(
            env.p1.update_sg(web.id, name="default"),
            StatusCode.ALREADY_EXISTS,
            "SecurityGroupDefaultAlreadyExists",
            "security_group.name",
        )
    assert sorted(g.name for g in await env.p1.list_sgs()) == ["default", "web"]


async def test_new_group_gets_two_egress_rules(env: Env) -> None:
    sg = await env.p1.sg(name="web", description="d", stateful=False)
    assert (sg.name, sg.description, sg.stateful, sg.project_id) == ("web", "d", False, "p1")
    assert rule_set(sg) == {("egress", "IPv4", "", ""), ("egress", "IPv6", "", "")}
    assert all(not r.remote_ip_prefix for r in sg.rules)
    # Creating a group also gives the project its default group.
    assert sorted(g.name for g in await env.p1.list_sgs()) == ["default", "web"]


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"protocol": "bogus"}, "SecurityGroupRuleInvalidProtocol", "protocol"),
        ({"protocol": "256"}, "SecurityGroupRuleInvalidProtocol", "protocol"),
        ({"protocol": "icmp", "port_range_min": 300}, "SecurityGroupInvalidIcmpValue",
         "port_range_min"),
        ({"protocol": "icmp", "port_range_min": 8, "port_range_max": 256},
         "SecurityGroupInvalidIcmpValue", "port_range_max"),
        ({"protocol": "icmp", "port_range_max": 0}, "SecurityGroupMissingIcmpType",
         "port_range_min"),
        ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80},
         "SecurityGroupInvalidPortRange", "port_range_max"),
        ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 80},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        ({"protocol": "tcp", "port_range_min": 70000, "port_range_max": 70000},
         "SecurityGroupInvalidPortValue", "port_range_min"),
        ({"port_range_min": 80, "port_range_max": 80}, "SecurityGroupProtocolRequiredWithPorts",
         "protocol"),
        ({"protocol": "gre", "port_range_min": 80, "port_range_max": 80},
         "SecurityGroupInvalidProtocolForPort", "protocol"),
        ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "SELF"},
         "SecurityGroupRemoteGroupAndRemoteIpPrefix", "remote_group_id"),
        ({"remote_ip_prefix": "10.0.0.0/33"}, "InvalidCIDR", "remote_ip_prefix"),
        ({"remote_ip_prefix": "nope"}, "InvalidCIDR", "remote_ip_prefix"),
        ({"remote_ip_prefix": "fd00::/64"}, "SecurityGroupRuleParameterConflict",
         "remote_ip_prefix"),
        ({"protocol": "ipv6-icmp"}, "SecurityGroupEthertypeConflictWithProtocol", "ethertype"),
        ({"ethertype": "IPv5"}, None, "ethertype"),
        ({"direction": "sideways"}, None, "direction"),
        ({"direction": ""}, None, "direction"),
    ],
)  # fmt: skip
async def test_rule_validation(
    env: Env, fields: dict[str, Any], reason: str | None, field: str
) -> None:
    sg = await env.p1.sg(name="web")
    fields = {"direction": "ingress", **fields}
    if fields.get("remote_group_id") == "SELF":
        fields["remote_group_id"] = sg.id
    async with unchanged(env):
        await expect_error(
            env.p1.rule(security_group_id=sg.id, **fields),
            INVALID,
            reason,
            f"security_group_rule.{field}",
        )
    assert (await env.p1.get_sg(sg.id)).rules == sg.rules


async def test_rules_and_duplicates(env: Env) -> None:
    sg = await env.p1.sg(name="web")
    ssh = await env.p1.rule(
        security_group_id=sg.id, direction="ingress", protocol="TCP",
        port_range_min=22, port_range_max=22, remote_ip_prefix="10.1.2.3/8",
    )  # fmt: skip
    assert (ssh.protocol, ssh.ethertype, ssh.remote_ip_prefix) == ("tcp", "IPv4", "10.1.2.3/8")
    assert (ssh.port_range_min, ssh.port_range_max) == (22, 22)
    assert ssh.project_id == "p1" and ssh.security_group_id == sg.id
    icmp = await env.p1.rule(
        security_group_id=sg.id, direction="ingress", protocol="icmp", port_range_min=8
    )
    assert icmp.HasField("port_range_min") and not icmp.HasField("port_range_max")
    any_v6 = await env.p1.rule(
        security_group_id=sg.id, direction="ingress", ethertype="IPv6", protocol="icmp"
    )
    assert any_v6.protocol == "ipv6-icmp"
    async with unchanged(env):
        for dup in (
            # Same rule, protocol by number.
            {"protocol": "6", "port_range_min": 22, "port_range_max": 22,
             "remote_ip_prefix": "10.1.2.3/8"},
            {"protocol": "icmp", "port_range_min": 8},
            {"ethertype": "IPv6", "protocol": "icmpv6"},
        ):  # fmt: skip
            failure = await expect_error(
                env.p1.rule(security_group_id=sg.id, direction="ingress", **dup),
                StatusCode.ALREADY_EXISTS,
                "SecurityGroupRuleExists",
            )
        # The default egress rule, with an explicit any prefix.
        failure = await expect_error(
            env.p1.rule(security_group_id=sg.id, direction="egress", remote_ip_prefix="0.0.0.0/0"),
            StatusCode.ALREADY_EXISTS,
            "SecurityGroupRuleExists",
        )
    egress_v4 = next(r for r in sg.rules if r.ethertype == "IPv4")
    assert failure.metadata["rule_id"] == egress_v4.id
    # The rules field follows creates and deletes.
    current = await env.p1.get_sg(sg.id)
    assert {r.id for r in current.rules} == {r.id for r in sg.rules} | {ssh.id, icmp.id, any_v6.id}
    await env.p1.delete_rule(ssh.id)
    current = await env.p1.get_sg(sg.id)
    assert ssh.id not in {r.id for r in current.rules} and len(current.rules) == 4
    await expect_error(
        env.p1.sgs.GetSecurityGroupRule(security_group_pb2.GetSecurityGroupRuleRequest(id=ssh.id)),
        StatusCode.NOT_FOUND,
        "SecurityGroupRuleNotFound",
    )
    # Once deleted, the same rule may be created again.
    await env.p1.rule(
        security_group_id=sg.id, direction="ingress", protocol="tcp",
        port_range_min=22, port_range_max=22, remote_ip_prefix="10.1.2.3/8",
    )  # fmt: skip


async def test_remote_group(env: Env) -> None:
    web = await env.p1.sg(name="web")
    db = await env.p1.sg(name="db")
    theirs = await env.p2.sg(name="theirs")
    async with unchanged(env):
        for remote in ("0b1c2d3e-0000-4000-8000-000000000000", theirs.id):
            await expect_error(
                env.p1.rule(security_group_id=db.id, direction="ingress", remote_group_id=remote),
                StatusCode.NOT_FOUND,
                "SecurityGroupNotFound",
            )
    rule = await env.p1.rule(
        security_group_id=db.id, direction="ingress", protocol="tcp",
        port_range_min=5432, port_range_max=5432, remote_group_id=web.id,
    )  # fmt: skip
    assert rule.remote_group_id == web.id
    # Deleting the remote group takes the rules naming it with it.
    await env.p1.delete_sg(web.id)
    await expect_error(env.p1.get_sg(web.id), StatusCode.NOT_FOUND, "SecurityGroupNotFound")
    assert rule.id not in {r.id for r in (await env.p1.get_sg(db.id)).rules}
    assert rule.id not in {r.id for r in await env.p1.list_rules()}
    assert await index_keys(env, f"sgref/{web.id}/") == {}
    assert await index_keys(env, f"sgrule/{web.id}/") == {}


async def test_rules_of_another_project(env: Env) -> None:
    theirs = await env.p2.sg(name="theirs")
    async with unchanged(env):
        await expect_error(
            env.p1.rule(security_group_id=theirs.id, direction="ingress"),
            StatusCode.NOT_FOUND,
            "SecurityGroupNotFound",
        )
        await expect_error(
            env.p1.delete_rule(theirs.rules[0].id),
            StatusCode.NOT_FOUND,
            "SecurityGroupRuleNotFound",
        )
        await expect_error(
            env.p1.delete_sg(theirs.id), StatusCode.NOT_FOUND, "SecurityGroupNotFound"
        )
    assert not {r.id for r in theirs.rules} & {r.id for r in await env.p1.list_rules()}
    # An admin may add rules to any project's group; they belong to that project.
    rule = await env.admin.rule(security_group_id=theirs.id, direction="ingress", protocol="udp")
    assert rule.project_id == "p2"


async def test_group_in_use(env: Env) -> None:
    net = await env.p1.network(name="n")
    await env.p1.subnet(net.id, "10.0.0.0/24")
    web = await env.p1.sg(name="web")
    port = await env.p1.port(net.id, security_groups=port_pb2.SecurityGroupIdList(ids=[web.id]))
    async with unchanged(env):
        failure = await expect_error(
            env.p1.delete_sg(web.id), StatusCode.FAILED_PRECONDITION, "SecurityGroupInUse"
        )
        # Changing statefulness of a group in use is refused too.
        await expect_error(
            env.p1.update_sg(web.id, stateful=False),
            StatusCode.FAILED_PRECONDITION,
            "SecurityGroupInUse",
        )
    assert failure.metadata["ports"] == port.id
    assert (await env.p1.get_sg(web.id)).rules == web.rules
    # Detach it; then it can go.
    await env.p1.update_port(port.id, security_groups=port_pb2.SecurityGroupIdList())
    await env.p1.delete_sg(web.id)
    assert await index_keys(env, f"sgrule/{web.id}/") == {}


async def test_default_group_protection(env: Env) -> None:
    (default,) = await env.p1.list_sgs()
    async with unchanged(env):
        await expect_error(
            env.p1.delete_sg(default.id),
            StatusCode.FAILED_PRECONDITION,
            "SecurityGroupCannotRemoveDefault",
        )
        await expect_error(
            env.p1.update_sg(default.id, name="renamed"),
            StatusCode.FAILED_PRECONDITION,
            "SecurityGroupCannotUpdateDefault",
        )
    # The description may change.
    assert (await env.p1.update_sg(default.id, description="mine")).description == "mine"
    # An admin may delete it; the project gets a fresh one when it next needs one.
    await env.admin.delete_sg(default.id)
    assert await index_keys(env, f"sgrule/{default.id}/") == {}
    (fresh,) = await env.p1.list_sgs()
    assert fresh.name == "default" and fresh.id != default.id and len(fresh.rules) == 4


async def test_update_group(env: Env) -> None:
    sg = await env.p1.sg(name="web")
    renamed = await env.p1.update_sg(sg.id, name="www", description="d", tags=["x"])
    assert (renamed.name, renamed.description, list(renamed.tags)) == ("www", "d", ["x"])
    assert renamed.revision_number == sg.revision_number + 1
    stateless = await env.p1.update_sg(sg.id, stateful=False)
    assert stateless.stateful is False
    async with unchanged(env):
        await expect_error(
            env.p1.update_sg(sg.id, if_revision=1, name="stale"),
            StatusCode.ABORTED,
            "RevisionNumberConstraintFailed",
        )
        await expect_error(
            env.p1.update_sg(sg.id, rules=[security_group_pb2.SecurityGroupRule()]),
            INVALID,
            field="security_group.rules",
        )


async def test_list_rules_filtered(env: Env) -> None:
    web = await env.p1.sg(name="web")
    db = await env.p1.sg(name="db")
    extra = await env.p1.rule(security_group_id=web.id, direction="ingress", protocol="tcp")
    by_group = await env.p1.list_rules(security_group_id=web.id)
    assert {r.id for r in by_group} == {r.id for r in web.rules} | {extra.id}
    assert {r.id for r in await env.p1.list_rules(security_group_id=db.id)} == {
        r.id for r in db.rules
    }
    ingress = await env.p1.list_rules(security_group_id=web.id, direction="ingress")
    assert [r.id for r in ingress] == [extra.id]
    assert {r.id for r in await env.p1.list_rules(protocol="tcp")} == {extra.id}
    # egress of web and db, egress and ingress of the default group
    assert len(await env.p1.list_rules(ethertype="IPv6")) == 4
    assert await env.p2.list_rules(security_group_id=web.id) == []


async def test_list_groups_filters(env: Env) -> None:
    web = await env.p1.sg(name="web", tags=["a"])
    await env.p1.sg(name="db")
    await env.p2.sg(name="web")
    assert [g.id for g in await env.p1.list_sgs(name="web")] == [web.id]
    assert [g.id for g in await env.p1.list_sgs(tags=["a"])] == [web.id]
    assert len(await env.admin.list_sgs(name="web")) == 2
    assert len(await env.admin.list_sgs(project_id="p2")) == 2  # web and its default


async def test_quota(start_env: Any) -> None:
    env: Env = await start_env(quotas={"security_group": 2, "security_group_rule": 7})
    await env.p1.sg(name="a")  # with the default group: 2 groups, 4 + 2 rules
    async with unchanged(env):
        await expect_error(env.p1.sg(name="b"), StatusCode.RESOURCE_EXHAUSTED, "OverQuota")
    (sg,) = await env.p1.list_sgs(name="a")
    await env.p1.rule(security_group_id=sg.id, direction="ingress", protocol="tcp")
    async with unchanged(env):
        await expect_error(
            env.p1.rule(security_group_id=sg.id, direction="ingress", protocol="udp"),
            StatusCode.RESOURCE_EXHAUSTED,
            "OverQuota",
        )
