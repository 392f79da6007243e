"""Security groups and rules, with each project's lazily created default group."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from controller import sgrules
from controller.auth import Context
from controller.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from controller.model import SecurityGroup, SecurityGroupRule
from controller.services.base import (
    ListQuery,
    Service,
    bump,
    check_revision,
    check_update_fields,
    reject_unknown,
)
from controller.store import Txn

DEFAULT_NAME = "default"
RULE_FIELDS = frozenset(
    {
        "security_group_id",
        "direction",
        "ethertype",
        "protocol",
        "port_range_min",
        "port_range_max",
        "remote_ip_prefix",
        "remote_group_id",
        "description",
    }
)


class SecurityGroupService(Service):
    # -- the default group
    def default_group(self, txn: Txn, project_id: str) -> SecurityGroup:
        """The project's default group, created in `txn` if it does not exist yet."""
        ids = self.cache.ids("default_sg", project_id)
        if ids:
            sg = self.cache.get(SecurityGroup, min(ids))
            assert sg is not None
            return sg
        # If another request of this process is creating it, both transactions race on
        # the sgdefault index key and the loser rebuilds once the winner is visible.
        txn.reserve(("default_sg", project_id))
        now = time.time()
        sg = SecurityGroup(
            id=str(uuid.uuid4()),
            project_id=project_id,
            name=DEFAULT_NAME,
            description="Default security group",
            revision_number=1,
            created_at=now,
            updated_at=now,
            stateful=True,
            is_default=True,
            quota_slot=self.quota_slot(txn, project_id, "security_group", enforce=False),
        )
        txn.create(sg)
        for rule in sgrules.default_rules(sg.id):
            self._create_implicit_rule(txn, sg, rule, now)
        return sg

    def _create_implicit_rule(
        self, txn: Txn, sg: SecurityGroup, r: sgrules.NormalizedRule, now: float
    ) -> None:
        rule = self._rule(sg, r, now, "")
        rule.quota_slot = self.quota_slot(txn, sg.project_id, "security_group_rule", enforce=False)
        txn.create(rule)

    async def ensure_default(self, project_id: str) -> None:
        if self.cache.has("default_sg", project_id):
            return
        await self.store.commit(lambda txn: self.default_group(txn, project_id))

    def _rule(
        self, sg: SecurityGroup, r: sgrules.NormalizedRule, now: float, description: str
    ) -> SecurityGroupRule:
        return SecurityGroupRule(
            id=str(uuid.uuid4()),
            project_id=sg.project_id,
            description=description,
            revision_number=1,
            created_at=now,
            updated_at=now,
            security_group_id=sg.id,
            direction=r.direction,
            ethertype=r.ethertype,
            protocol=r.protocol or "",
            port_range_min=r.port_range_min,
            port_range_max=r.port_range_max,
            remote_ip_prefix=r.remote_ip_prefix or "",
            remote_group_id=r.remote_group_id or "",
            dedup_key=sgrules.rule_digest(r),
        )

    # -- groups
    async def create(self, ctx: Context, attrs: Mapping[str, Any]) -> SecurityGroup:
        reject_unknown(attrs, {"stateful"}, "security_group")
        if attrs.get("name") == DEFAULT_NAME:
            raise AlreadyExists(
                "Default security group already exists",
                reason="SecurityGroupDefaultAlreadyExists",
                field="security_group.name",
            )

        def build(txn: Txn) -> SecurityGroup:
            common = self.common(ctx, attrs, "security_group")
            self.default_group(txn, common["project_id"])
            common["quota_slot"] = self.quota_slot(txn, common["project_id"], "security_group")
            sg = SecurityGroup(**common, stateful=attrs.get("stateful", True))
            txn.create(sg)
            for r in sgrules.default_rules(sg.id, is_default=False):
                self._create_implicit_rule(txn, sg, r, common["created_at"])
            return sg

        sg, _ = await self.store.commit(build)
        return sg

    async def get(self, ctx: Context, id_: str) -> SecurityGroup:
        await self.store.sync()
        return self.find(ctx, SecurityGroup, id_)

    async def list_page(self, ctx: Context, q: ListQuery) -> tuple[list[SecurityGroup], str]:
        await self.store.sync()
        if not ctx.is_admin or not q.equals.get("project_id"):
            await self.ensure_default(ctx.project_id)
        return self.page(ctx, self.cache.all(SecurityGroup), q)

    def rules_of(self, sg_id: str) -> list[SecurityGroupRule]:
        rules = self.cache.related(SecurityGroupRule, "sg_rules", sg_id)
        return sorted(rules, key=lambda r: (r.created_at, r.id))

    async def update(
        self, ctx: Context, id_: str, attrs: Mapping[str, Any], if_revision: int
    ) -> SecurityGroup:
        check_update_fields(attrs, {"stateful"}, "security_group")

        def build(txn: Txn) -> SecurityGroup:
            old = self.find(ctx, SecurityGroup, id_)
            check_revision(old, if_revision)
            new_name = attrs.get("name", old.name)
            if old.is_default and new_name != DEFAULT_NAME and not ctx.is_admin:
                raise FailedPrecondition(
                    "Updating default security group not allowed.",
                    reason="SecurityGroupCannotUpdateDefault",
                )
            if not old.is_default and new_name == DEFAULT_NAME:
                raise AlreadyExists(
                    "Default security group already exists",
                    reason="SecurityGroupDefaultAlreadyExists",
                    field="security_group.name",
                )
            if "stateful" in attrs and attrs["stateful"] != old.stateful:
                self._require_unused(old)
                txn.prefix_unchanged(f"sgport/{old.id}/")
            new = bump(old, attrs)
            txn.update(old, new)
            return new

        sg, _ = await self.store.commit(build)
        return sg

    def _require_unused(self, sg: SecurityGroup) -> None:
        ports = sorted(self.cache.ids("sg_ports", sg.id))
        if ports:
            raise FailedPrecondition(
                f"Security Group {sg.id} in use by ports: {', '.join(ports[:20])}",
                reason="SecurityGroupInUse",
                ports=",".join(ports),
            )

    async def delete(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            sg = self.find(ctx, SecurityGroup, id_)
            check_revision(sg, if_revision)
            if sg.is_default and not ctx.is_admin:
                raise FailedPrecondition(
                    "Insufficient rights for removing default security group.",
                    reason="SecurityGroupCannotRemoveDefault",
                )
            self._require_unused(sg)
            txn.prefix_unchanged(f"sgport/{sg.id}/")
            txn.prefix_unchanged(f"sgref/{sg.id}/")
            for rule in self.cache.related(SecurityGroupRule, "sg_rules", sg.id):
                txn.delete(rule)
            # Rules of other groups that name this one as remote go with it.
            for rule in self.cache.related(SecurityGroupRule, "sg_refs", sg.id):
                if rule.security_group_id != sg.id:
                    txn.delete(rule)
            txn.delete(sg)

        await self.store.commit(build)

    # -- rules
    async def create_rule(self, ctx: Context, attrs: Mapping[str, Any]) -> SecurityGroupRule:
        reject_unknown(attrs, RULE_FIELDS, "security_group_rule")
        norm = sgrules.normalize_rule(
            direction=attrs.get("direction", ""),
            ethertype=attrs.get("ethertype") or "IPv4",
            protocol=attrs.get("protocol") or None,
            port_range_min=attrs.get("port_range_min"),
            port_range_max=attrs.get("port_range_max"),
            remote_ip_prefix=attrs.get("remote_ip_prefix") or None,
            remote_group_id=attrs.get("remote_group_id") or None,
        )

        def build(txn: Txn) -> SecurityGroupRule:
            sg = self.find(
                ctx,
                SecurityGroup,
                attrs.get("security_group_id", ""),
                "security_group_rule.security_group_id",
            )
            if not ctx.is_admin and sg.project_id != ctx.project_id:
                raise PermissionDenied("not your security group", reason="PolicyNotAuthorized")
            if norm.remote_group_id:
                remote = self.cache.get(SecurityGroup, norm.remote_group_id)
                if remote is None or not self.visible(ctx, remote):
                    raise NotFound(
                        f"Security group {norm.remote_group_id} does not exist",
                        reason="SecurityGroupNotFound",
                        field="security_group_rule.remote_group_id",
                    )
                txn.depends_on(remote)
            rule = self._rule(sg, norm, time.time(), attrs.get("description", ""))
            dup = self.cache.ids("rule", (sg.id, rule.dedup_key))
            if dup:
                raise AlreadyExists(
                    f"Security group rule already exists. Rule id is {min(dup)}.",
                    reason="SecurityGroupRuleExists",
                    rule_id=min(dup),
                )
            rule.quota_slot = self.quota_slot(txn, sg.project_id, "security_group_rule")
            txn.depends_on(sg)
            txn.create(rule)
            return rule

        rule, _ = await self.store.commit(build)
        return rule

    def _rule_visible(self, ctx: Context, rule: Any) -> bool:
        return ctx.is_admin or rule.project_id == ctx.project_id

    async def get_rule(self, ctx: Context, id_: str) -> SecurityGroupRule:
        await self.store.sync()
        return self.find(ctx, SecurityGroupRule, id_)

    async def list_rule_page(
        self, ctx: Context, q: ListQuery
    ) -> tuple[list[SecurityGroupRule], str]:
        await self.store.sync()
        sg_id = q.equals.get("security_group_id")
        objs = (
            self.cache.related(SecurityGroupRule, "sg_rules", sg_id)
            if sg_id
            else self.cache.all(SecurityGroupRule)
        )
        return self.page(ctx, objs, q)

    async def delete_rule(self, ctx: Context, id_: str, if_revision: int) -> None:
        def build(txn: Txn) -> None:
            rule = self.find(ctx, SecurityGroupRule, id_)
            check_revision(rule, if_revision)
            txn.delete(rule)

        await self.store.commit(build)

    def port_count(self, sg_id: str) -> int:
        return len(self.cache.ids("sg_ports", sg_id))
