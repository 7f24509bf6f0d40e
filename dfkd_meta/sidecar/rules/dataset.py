"""SPEC §7: dataset provenance and the teacher check."""
from __future__ import annotations

import numpy as np

from ..state import GroupContext
from ..types import forced_reason
from . import rule


@rule("DM510", on="dataset_provenance")
def class_counts_sum_to_the_sample_count(ctx: GroupContext) -> None:
    """class_counts sum to sample_count."""
    ds, n = ctx.datasets.get("class_counts"), ctx.attrs.get("sample_count")
    if ds is None or n is None:
        return
    counts = np.asarray(ds[()], dtype=np.int64)
    if int(counts.sum()) != n:
        ctx.report(f"{ctx.path}/class_counts", f"sum {int(counts.sum())} != sample_count {n}")


def _check(ctx: GroupContext) -> dict:
    return ctx.groups.get("teacher_check") or {}


@rule("DM521", on="sidecar")
def teacher_check_saw_no_more_than_the_statistics(ctx: GroupContext) -> None:
    """The check measured no more examples than the statistics saw; not checked where a privacy block covers the
    dataset (its sample count is the sum of noised class counts, SPEC §10.1)."""
    tc, n = ctx.state.group_values("/dataset/teacher_check"), ctx.state.group_values("/dataset").get("sample_count")
    if "dataset" in (ctx.state.group_values("/privacy").get("applies_to") or []):
        return
    if tc.get("samples") is not None and n is not None and tc["samples"] > n:
        ctx.report("/dataset/teacher_check@samples", f"{tc['samples']} samples, but the statistics saw {n}")


@rule("DM521", on="dataset_provenance")
def teacher_check_is_consistent(ctx: GroupContext) -> None:
    """The check is forced when below its threshold."""
    tc, p = _check(ctx), f"{ctx.path}/teacher_check"
    acc, floor, forced = tc.get("accuracy"), tc.get("min_accuracy"), tc.get("forced")
    if None not in (acc, floor, forced) and acc < floor and not forced:
        ctx.report(f"{p}@forced", f"accuracy {acc:.1%} is below min_accuracy {floor:.1%} but forced is 0")


@rule("DM520", on="dataset_provenance")
def teacher_check_was_forced(ctx: GroupContext) -> None:
    """Warn every consumer when the publisher forced an export past the writer's teacher check."""
    tc = _check(ctx)
    acc, floor, forced = tc.get("accuracy"), tc.get("min_accuracy"), tc.get("forced")
    if None in (acc, floor, forced) or not forced:
        return
    ctx.report(f"{ctx.path}/teacher_check@accuracy", f"the teacher was right on {acc:.1%} of the export data "
                                                      f"and the publisher forced the export: {forced_reason(acc, floor)}")
