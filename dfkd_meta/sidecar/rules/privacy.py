"""SPEC §10: the privacy block."""
from __future__ import annotations

from ..state import GroupContext
from . import rule


@rule("DM804", on="privacy")
def laplace_has_no_delta(ctx: GroupContext) -> None:
    """The laplace mechanism has delta = 0."""
    a = ctx.attrs
    if a.get("mechanism") == "laplace" and a.get("delta") not in (None, 0.0):
        ctx.report(f"{ctx.path}@delta", f"delta must be 0 for the laplace mechanism, got {a['delta']}")
