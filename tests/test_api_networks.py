"""NetworkService against a real etcd: Neutron's network semantics over gRPC."""

from __future__ import annotations

import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from baryon.v1 import network_pb2
from tests.support.controller import (
    Env,
    StartEnv,
    StatusCode,
    expect_error,
    index_keys,
    unchanged,
)

INVALID = StatusCode.INVALID_ARGUMENT


async def test_create_defaults(env: Env) -> None:
    net = await env.p1.network(name="n1")
    assert net.id and net.project_id == "p1" and net.name == "n1"
    assert net.admin_state_up is True and net.HasField("admin_state_up")
    assert net.status == "ACTIVE"
    assert net.mtu == 1450  # vxlan over the 1500 default physnet MTU
    assert net.port_security_enabled is True
    assert net.shared is False and net.external is False
    assert net.provider_network_type == "vxlan"
    assert not net.HasField("provider_physical_network")
    assert 1 <= net.provider_segmentation_id <= 65535
    assert net.revision_number == 1
    assert net.created_at.seconds > 0 and net.created_at == net.updated_at
    assert list(net.subnets) == []
    assert await env.p1.get_network(net.id) == net
    # The segment is held in etcd.
    assert await index_keys(env, "seg/") == {f"vxlan/-/{net.provider_segmentation_id}": net.id}


async def test_create_explicit_attributes(env: Env) -> None:
    net = await env.p1.network(
        name="n", description="d", tags=["a", "b", "a"], admin_state_up=False, mtu=1400,
        port_security_enabled=False,
    )  # fmt: skip
    assert (net.description, list(net.tags)) == ("d", ["a", "b"])
    assert (net.admin_state_up, net.mtu, net.port_security_enabled) == (False, 1400, False)
    # Members may pass the defaults of admin-only attributes.
    net = await env.p1.network(shared=False, external=False)
    assert net.shared is False


async def test_create_rejects_bad_attributes(env: Env) -> None:
    async with unchanged(env):
        await expect_error(env.p1.network(mtu=1451), INVALID, field="network.mtu")
        await expect_error(env.p1.network(mtu=67), INVALID, field="network.mtu")
        await expect_error(env.p1.network(name="x" * 256), INVALID, field="network.name")
        await expect_error(env.p1.network(tags=["a,b"]), INVALID, "InvalidTag", "network.tags[0]")
        await expect_error(env.p1.network(status="DOWN"), INVALID, field="network.status")
    assert await env.admin.list_networks() == []


@pytest.mark.parametrize(
    "provider",
    [
        {"provider_network_type": "vlan"},
        {"provider_network_type": "vxlan"},
        {"provider_segmentation_id": 7},
        {"provider_physical_network": "physnet1"},
    ],
)
async def test_provider_attributes_are_admin_only(env: Env, provider: dict[str, object]) -> None:
    async with unchanged(env):
        await expect_error(
            env.p1.network(name="n", **provider),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
            field=None,
        )
    assert await env.admin.list_networks() == []


@pytest.mark.parametrize(
    ("provider", "field"),
    [
        ({"provider_network_type": "flat"}, "provider_physical_network"),
        ({"provider_network_type": "flat", "provider_physical_network": ""},
         "provider_physical_network"),
        ({"provider_network_type": "flat", "provider_physical_network": "physnet1",
          "provider_segmentation_id": 5}, "provider_segmentation_id"),
        ({"provider_network_type": "vlan", "provider_physical_network": "physnet1",
          "provider_segmentation_id": 4095}, "provider_segmentation_id"),
        ({"provider_network_type": "vlan", "provider_physical_network": "physnet1",
          "provider_segmentation_id": 0}, "provider_segmentation_id"),
        ({"provider_network_type": "vlan", "provider_segmentation_id": 100},
         "provider_physical_network"),
        ({"provider_network_type": "vlan", "provider_physical_network": "nosuch"},
         "provider_physical_network"),
        ({"provider_network_type": "vxlan", "provider_physical_network": "physnet1"},
         "provider_physical_network"),
        ({"provider_network_type": "vxlan", "provider_segmentation_id": 2**24},
         "provider_segmentation_id"),
        ({"provider_network_type": "local", "provider_segmentation_id": 3},
         "provider_segmentation_id"),
        ({"provider_network_type": "geneve"}, "provider_network_type"),
        ({"provider_segmentation_id": 100}, "provider_network_type"),
        ({"provider_physical_network": "physnet1"}, "provider_network_type"),
    ],
)  # fmt: skip
async def test_provider_validation(env: Env, provider: dict[str, object], field: str) -> None:
    async with unchanged(env):
        await expect_error(env.admin.network(**provider), INVALID, field=f"network.{field}")
    assert await env.admin.list_networks() == []


async def test_provider_networks(env: Env) -> None:
    flat = await env.admin.network(provider_network_type="flat", provider_physical_network="ext")
    assert (flat.provider_physical_network, flat.mtu) == ("ext", 1500)
    assert not flat.HasField("provider_segmentation_id")
    vlan = await env.admin.network(
        provider_network_type="vlan", provider_physical_network="physnet1",
        provider_segmentation_id=150,
    )  # fmt: skip
    assert (vlan.provider_segmentation_id, vlan.mtu) == (150, 1500)
    # Outside the tenant range is fine for an admin asking for it explicitly.
    vx = await env.admin.network(provider_network_type="vxlan", provider_segmentation_id=70000)
    assert vx.provider_segmentation_id == 70000
    # Without an ID, a vlan gets one from physnet1's tenant range 100..199.
    auto = await env.admin.network(provider_network_type="vlan")
    assert auto.provider_physical_network == "physnet1"
    assert 100 <= auto.provider_segmentation_id <= 199
    local = await env.admin.network(provider_network_type="local")
    assert not local.HasField("provider_segmentation_id")
    listed = await env.admin.list_networks(provider_network_type="vlan")
    assert {n.id for n in listed} == {vlan.id, auto.id}


@pytest.mark.parametrize(
    ("provider", "reason", "field"),
    [
        ({"provider_network_type": "vlan", "provider_physical_network": "physnet1",
          "provider_segmentation_id": 150}, "VlanIdInUse", "provider_segmentation_id"),
        ({"provider_network_type": "vxlan", "provider_segmentation_id": 5000},
         "TunnelIdInUse", "provider_segmentation_id"),
        ({"provider_network_type": "gre", "provider_segmentation_id": 5000},
         "TunnelIdInUse", "provider_segmentation_id"),
        ({"provider_network_type": "flat", "provider_physical_network": "ext"},
         "FlatNetworkInUse", "provider_physical_network"),
    ],
)  # fmt: skip
async def test_segment_taken(
    env: Env, provider: dict[str, object], reason: str, field: str
) -> None:
    first = await env.admin.network(name="first", **provider)
    async with unchanged(env):
        await expect_error(
            env.admin.network(name="second", **provider),
            StatusCode.ALREADY_EXISTS,
            reason,
            f"network.{field}",
        )
    assert [n.id for n in await env.admin.list_networks()] == [first.id]


async def test_tenant_segments_exhausted_then_released(start_env: StartEnv) -> None:
    env = await start_env(ml2={"vni_ranges": ["1:2"]})
    a = await env.p1.network(name="a")
    b = await env.p2.network(name="b")
    assert {a.provider_segmentation_id, b.provider_segmentation_id} == {1, 2}
    async with unchanged(env):
        await expect_error(
            env.p1.network(name="c"), StatusCode.RESOURCE_EXHAUSTED, "NoNetworkAvailable"
        )
    # An explicit segment outside the tenant ranges is still available to an admin.
    explicit = await env.admin.network(provider_network_type="vxlan", provider_segmentation_id=3)
    await env.p1.delete_network(a.id)
    assert await index_keys(env, "seg/vxlan/-/") == {
        str(b.provider_segmentation_id): b.id,
        "3": explicit.id,
    }
    c = await env.p1.network(name="c")
    assert c.provider_segmentation_id == a.provider_segmentation_id


@pytest.mark.parametrize("attr", ["shared", "external"])
async def test_shared_and_external_are_admin_only(env: Env, attr: str) -> None:
    async with unchanged(env):
        await expect_error(
            env.p1.network(name="n", **{attr: True}),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
    net = await env.p1.network(name="n")
    async with unchanged(env):
        await expect_error(
            env.p1.update_network(net.id, **{attr: True}),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
    admin_net = await env.admin.network(name="a", **{attr: True})
    assert getattr(admin_net, attr) is True
    updated = await env.admin.update_network(net.id, **{attr: True})
    assert getattr(updated, attr) is True


async def test_visibility(env: Env) -> None:
    n1 = await env.p1.network(name="n1")
    n2 = await env.p2.network(name="n2")
    shared = await env.admin.network(name="shared", shared=True)
    private = await env.admin.network(name="private")
    assert {n.id for n in await env.p1.list_networks()} == {n1.id, shared.id}
    assert {n.id for n in await env.p2.list_networks()} == {n2.id, shared.id}
    assert {n.id for n in await env.admin.list_networks()} == {n1.id, n2.id, shared.id, private.id}
    assert (await env.p2.get_network(shared.id)).id == shared.id
    async with unchanged(env):
        for call in (
            env.p2.get_network(n1.id),
            env.p2.update_network(n1.id, name="stolen"),
            env.p2.delete_network(n1.id),
            env.p1.get_network(private.id),
        ):
            failure = await expect_error(call, StatusCode.NOT_FOUND, "NetworkNotFound")
        assert failure.metadata["resource_id"] == private.id
        # A shared network is visible, but only its owner (or an admin) may change it.
        await expect_error(
            env.p1.update_network(shared.id, name="x"),
            StatusCode.PERMISSION_DENIED,
            "PolicyNotAuthorized",
        )
        await expect_error(
            env.p1.delete_network(shared.id), StatusCode.PERMISSION_DENIED, "PolicyNotAuthorized"
        )
        await expect_error(
            env.p1.get_network("no-such-id"), StatusCode.NOT_FOUND, "NetworkNotFound"
        )
        await expect_error(env.p1.get_network(""), INVALID, field="id")
    # Filtering by another project's id does not reveal its networks.
    assert await env.p1.list_networks(project_id="p2") == []
    assert [n.id for n in await env.admin.list_networks(project_id="p2")] == [n2.id]


async def test_update_with_mask(env: Env) -> None:
    net = await env.p1.network(name="n", description="keep", tags=["t"])
    # Fields set in the message but not named in the mask are ignored.
    updated = await env.p1.nets.UpdateNetwork(
        network_pb2.UpdateNetworkRequest(
            network=network_pb2.Network(
                id=net.id, name="renamed", description="ignored", admin_state_up=False, mtu=1400
            ),
            update_mask=FieldMask(paths=["name", "admin_state_up"]),
        )
    )
    assert (updated.name, updated.admin_state_up) == ("renamed", False)
    assert (updated.description, updated.mtu, list(updated.tags)) == ("keep", 1450, ["t"])
    assert updated.revision_number == net.revision_number + 1
    assert updated.created_at == net.created_at
    assert updated.updated_at.ToNanoseconds() >= net.updated_at.ToNanoseconds()
    assert await env.p1.get_network(net.id) == updated
    # Clearing a field through the mask.
    cleared = await env.p1.update_network(net.id, tags=[], description="")
    assert (list(cleared.tags), cleared.description) == ([], "")
    # An empty mask replaces the fields that are set.
    again = await env.p1.nets.UpdateNetwork(
        network_pb2.UpdateNetworkRequest(network=network_pb2.Network(id=net.id, name="third"))
    )
    assert again.name == "third" and again.admin_state_up is False
    async with unchanged(env):
        await expect_error(
            env.p1.nets.UpdateNetwork(
                network_pb2.UpdateNetworkRequest(
                    network=network_pb2.Network(id=net.id),
                    update_mask=FieldMask(paths=["no_such_field"]),
                )
            ),
            INVALID,
            field="update_mask",
        )
        for name, value in (("status", "DOWN"), ("project_id", "p2")):
            await expect_error(
                env.p1.update_network(net.id, **{name: value}), INVALID, field=f"network.{name}"
            )
        await expect_error(env.p1.update_network(net.id, mtu=9000), INVALID, field="network.mtu")
        await expect_error(
            env.p1.update_network("missing", name="x"), StatusCode.NOT_FOUND, "NetworkNotFound"
        )


async def test_if_revision(env: Env) -> None:
    net = await env.p1.network(name="n")
    v2 = await env.p1.update_network(net.id, if_revision=1, name="v2")
    assert v2.revision_number == 2
    async with unchanged(env):
        await expect_error(
            env.p1.update_network(net.id, if_revision=1, name="stale"),
            StatusCode.ABORTED,
            "RevisionNumberConstraintFailed",
        )
        await expect_error(
            env.p1.delete_network(net.id, if_revision=1),
            StatusCode.ABORTED,
            "RevisionNumberConstraintFailed",
        )
    assert (await env.p1.get_network(net.id)).name == "v2"
    await env.p1.delete_network(net.id, if_revision=2)
    assert await env.p1.list_networks() == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider_segmentation_id": 77}, "provider_segmentation_id"),
        ({"provider_network_type": "vlan"}, "provider_network_type"),
        ({"provider_physical_network": "physnet1"}, "provider_physical_network"),
    ],
)
async def test_provider_update_rejected(env: Env, fields: dict[str, object], field: str) -> None:
    net = await env.admin.network(name="n")
    async with unchanged(env):
        await expect_error(
            env.admin.update_network(net.id, **fields), INVALID, field=f"network.{field}"
        )
    assert await env.admin.get_network(net.id) == net


async def test_delete_with_user_ports_is_refused(env: Env) -> None:
    net = await env.p1.network(name="n")
    subnet = await env.p1.subnet(net.id, "10.0.0.0/24")
    ports = [await env.p1.port(net.id, name=f"p{i}") for i in range(2)]
    async with unchanged(env):
        failure = await expect_error(
            env.p1.delete_network(net.id), StatusCode.FAILED_PRECONDITION, "NetworkInUse"
        )
    assert failure.metadata["ports"] == ",".join(sorted(p.id for p in ports))
    assert all(p.id in failure.message for p in ports)
    assert (await env.p1.get_network(net.id)).subnets == [subnet.id]
    assert len(await env.p1.list_ports(network_id=net.id)) == 2


async def test_delete_removes_subnets_and_service_ports(env: Env) -> None:
    net = await env.p1.network(name="n")
    s4 = await env.p1.subnet(net.id, "10.0.0.0/24")
    s6 = await env.p1.subnet(net.id, "fd00::/64")
    other = await env.p1.network(name="other")
    keep = await env.p1.subnet(other.id, "10.0.0.0/24")
    dhcp = await env.p1.port(net.id, device_owner="network:dhcp")
    assert sorted((await env.p1.get_network(net.id)).subnets) == sorted([s4.id, s6.id])
    await env.p1.delete_network(net.id)
    await expect_error(env.p1.get_network(net.id), StatusCode.NOT_FOUND, "NetworkNotFound")
    for sid in (s4.id, s6.id):
        await expect_error(env.p1.get_subnet(sid), StatusCode.NOT_FOUND, "SubnetNotFound")
    await expect_error(env.p1.get_port(dhcp.id), StatusCode.NOT_FOUND, "PortNotFound")
    assert [s.id for s in await env.p1.list_subnets()] == [keep.id]
    assert await env.p1.list_ports() == []
    # Nothing of the network is left in the index.
    assert await index_keys(env, f"netsubnet/{net.id}/") == {}
    assert await index_keys(env, f"netport/{net.id}/") == {}
    assert await index_keys(env, f"ip/{s4.id}/") == {}
    assert list(await index_keys(env, "seg/")) == [f"vxlan/-/{other.provider_segmentation_id}"]


async def test_pagination(env: Env) -> None:
    created = {(await env.p1.network(name=f"n{i}")).id for i in range(7)}
    await env.p2.network(name="hidden")
    seen: list[str] = []
    sizes = []
    token = ""
    while True:
        resp = await env.p1.nets.ListNetworks(
            network_pb2.ListNetworksRequest(page_size=3, page_token=token)
        )
        sizes.append(len(resp.networks))
        seen += [n.id for n in resp.networks]
        token = resp.next_page_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert len(seen) == len(set(seen)) and set(seen) == created
    assert seen == sorted(seen)
    # Exactly a full last page: no empty extra page.
    resp = await env.p1.nets.ListNetworks(network_pb2.ListNetworksRequest(page_size=7))
    assert len(resp.networks) == 7 and resp.next_page_token == ""
    await expect_error(
        env.p1.nets.ListNetworks(network_pb2.ListNetworksRequest(page_size=-1)),
        INVALID,
        field="page_size",
    )
    await expect_error(
        env.p1.nets.ListNetworks(network_pb2.ListNetworksRequest(page_token="abc")),
        INVALID,
        field="page_token",
    )


async def test_list_filters(env: Env) -> None:
    a = await env.p1.network(name="a", tags=["red", "blue"])
    b = await env.p1.network(name="b", tags=["red"])
    c = await env.p1.network(name="a", tags=["green"])
    d = await env.p2.network(name="d")
    s = await env.admin.network(name="s", shared=True, external=True)

    async def ids(client_name: str = "p1", **filters: object) -> set[str]:
        client = getattr(env, client_name)
        return {n.id for n in await client.list_networks(**filters)}

    assert await ids(name="a") == {a.id, c.id}
    assert await ids(tags=["red"]) == {a.id, b.id}
    assert await ids(tags=["red", "blue"]) == {a.id}
    assert await ids(tags_any=["blue", "green"]) == {a.id, c.id}
    assert await ids(tags=["red"], tags_any=["green"]) == set()
    assert await ids(name="a", tags=["green"]) == {c.id}
    assert await ids("admin", project_id="p1") == {a.id, b.id, c.id}
    assert await ids("admin", project_id="p2") == {d.id}
    assert await ids(shared=True) == {s.id}
    assert await ids(shared=False) == {a.id, b.id, c.id}
    assert await ids("admin", external=True) == {s.id}
    assert await ids(name="nope") == set()


async def test_quota(start_env: StartEnv) -> None:
    env = await start_env(quotas={"network": 2})
    first = [await env.p1.network(name=f"n{i}") for i in range(2)]
    async with unchanged(env):
        failure = await expect_error(
            env.p1.network(name="n3"), StatusCode.RESOURCE_EXHAUSTED, "OverQuota"
        )
    assert failure.metadata["resource"] == "network"
    assert {n.id for n in await env.p1.list_networks()} == {n.id for n in first}
    # Per project: p2 still has its own two.
    await env.p2.network(name="x")
    # Deleting frees quota.
    await env.p1.delete_network(first[0].id)
    await env.p1.network(name="n3")


async def test_unshare_refused_while_other_projects_use_it(env: Env) -> None:
    net = await env.admin.network(name="s", shared=True)
    await env.admin.subnet(net.id, "10.0.0.0/24")
    port = await env.p2.port(net.id)
    async with unchanged(env):
        await expect_error(
            env.admin.update_network(net.id, shared=False),
            StatusCode.FAILED_PRECONDITION,
            "InvalidSharedSetting",
        )
    await env.p2.delete_port(port.id)
    assert (await env.admin.update_network(net.id, shared=False)).shared is False
    await expect_error(env.p2.get_network(net.id), StatusCode.NOT_FOUND, "NetworkNotFound")


async def test_external_network_visible_to_every_project(env: Env) -> None:
    ext = await env.admin.network(name="public", external=True)
    assert ext.id in {n.id for n in await env.p1.list_networks()}
