"""SPEC §6: the model binding and its input domain."""
from __future__ import annotations

import math

from ..state import GroupContext
from . import rule


@rule("DM411", on="model_binding")
def paired_lists_have_one_length(ctx: GroupContext) -> None:
    """External-data paths and hashes, opset domains and versions: paired lists of one length."""
    a, p = ctx.attrs, ctx.path
    paths, hashes = a.get("external_data_paths"), a.get("external_data_sha256")
    if (paths is None) != (hashes is None) or (paths is not None and len(paths) != len(hashes)):
        ctx.report(f"{p}@external_data_sha256", "external_data_paths and external_data_sha256 differ in length")
    dom, ver = a.get("opset_domains"), a.get("opset_versions")
    if dom is not None and ver is not None and len(dom) != len(ver):
        ctx.report(f"{p}@opset_versions", f"{len(dom)} domains but {len(ver)} versions")


@rule("DM410", on="model_binding")
def external_paths_stay_inside_the_folder(ctx: GroupContext) -> None:
    """External-data paths are relative, without '..', and name each file once."""
    paths, p = ctx.attrs.get("external_data_paths"), ctx.path
    for rel in paths or []:
        parts = rel.replace("\\", "/").split("/")
        if not rel or rel.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            ctx.report(f"{p}@external_data_paths", f"{rel!r} is not a path inside the model's folder")
    if paths and len(set(paths)) != len(paths):
        ctx.report(f"{p}@external_data_paths", "a file is listed twice")


@rule("DM414", on="model_binding")
def input_shape_has_a_symbolic_batch(ctx: GroupContext) -> None:
    """input_shape is [-1, d1, ...] with every d >= 1."""
    shape = ctx.attrs.get("input_shape")
    if shape is not None and (shape[0] != -1 or any(d < 1 for d in shape[1:])):
        ctx.report(f"{ctx.path}@input_shape", f"{shape}: the first entry must be -1, the others >= 1")


@rule("DM413", on="input_domain")
def input_domain_is_consistent(ctx: GroupContext) -> None:
    """value_min < value_max, norm_std > 0, norm lists of one length."""
    a, p = ctx.attrs, ctx.path
    lo, hi = a.get("value_min"), a.get("value_max")
    if lo is not None and hi is not None and not lo < hi:
        ctx.report(f"{p}@value_max", f"value_min {lo} is not below value_max {hi}")
    mean, std = a.get("norm_mean"), a.get("norm_std")
    if std is not None and any(s <= 0 for s in std):
        ctx.report(f"{p}@norm_std", f"{std}: every entry must be > 0")
    if mean is not None and std is not None and len(mean) != len(std):
        ctx.report(f"{p}@norm_std", f"norm_mean has {len(mean)} entries, norm_std {len(std)}")


@rule("DM413", on="model_binding")
def input_domain_fits_the_input_shape(ctx: GroupContext) -> None:
    """The layout's rank is the input's, norm lists have 1 or channel-count entries, an image_shape
    (flat inputs only) has as many values as the input."""
    shape = ctx.attrs.get("input_shape")
    p = f"{ctx.path}/input_domain"
    dom = ctx.state.group_values(p)
    layout, mean, std = dom.get("layout"), dom.get("norm_mean"), dom.get("norm_std")
    if shape is None or layout is None:
        return
    if len(layout) != len(shape):
        ctx.report(f"{p}@layout", f"layout {layout} has rank {len(layout)}, input_shape {shape} rank {len(shape)}")
        return
    channels = shape[-1] if layout == "NHWC" else shape[1]
    for name, lst in (("norm_mean", mean), ("norm_std", std)):
        if lst is not None and len(lst) not in (1, channels):
            ctx.report(f"{p}@{name}", f"{len(lst)} entries; needs 1 or the channel count {channels}")
    image = ctx.state.group_values(f"{p}/convention").get("image_shape")
    if image is not None:
        if layout != "NC":
            ctx.report(f"{p}/convention@image_shape",
                       f"only a flat input (layout NC) records the image it flattens; the layout is {layout}")
        elif math.prod(image) != shape[1]:
            ctx.report(f"{p}/convention@image_shape", f"{image} has {math.prod(image)} values, the input {shape[1]}")
