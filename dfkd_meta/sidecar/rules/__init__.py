"""Semantic rules: one small registered function per rule id and element type.

``@rule("DM413", on="input_domain")`` registers a check that runs after the structure of every
group of that type (and of its subgroups) was checked; it reports through ``ctx.report``, which
only emits its own rule id. The rule's severity, SPEC section and fix come from the schema's rule
table; the function's docstring says what it checks. Adding a rule is one function here and one
line in the schema.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ..state import GroupContext

RuleFn = Callable[[GroupContext], None]


@dataclass(frozen=True)
class RuleCheck:
    rule: str
    on: str  # element type
    fn: RuleFn


RULES: dict[str, list[RuleCheck]] = {}


def rule(rule_id: str, *, on: str):
    """Register ``fn(ctx)`` as the check of ``rule_id`` on groups of type ``on``."""
    def register(fn: RuleFn) -> RuleFn:
        RULES.setdefault(on, []).append(RuleCheck(rule_id, on, fn))
        return fn
    return register


def run_rules(ctx: GroupContext) -> None:
    """Every rule registered on the group's type that the file's schema declares (a rule added by a newer
    MAJOR does not apply to files of an older one)."""
    for check in RULES.get(ctx.type_name, []):
        if check.rule in ctx.state.schema.rules:
            check.fn(replace(ctx, rule=check.rule))


def registered_rule_ids() -> set[str]:
    return {c.rule for checks in RULES.values() for c in checks}


from . import binding, dataset, layers, privacy, spectral  # noqa: E402,F401  (registers the rules)
