"""`dfkd-meta quantize`: the teacher in INT8, calibrated on inputs made from its sidecar."""
from __future__ import annotations

import json

import click

from dfkd_meta.config import CALIBRATION_METHODS, CORRECTIONS, QuantizeConfig

from .common import CONVENTION_HELP, DATA_HELP, DEVICE, QUIET, Command, read_limit_options


@click.command(cls=Command)
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="The float ONNX teacher.")
@click.option("--sidecar", type=click.Path(dir_okay=False),
              help="Its sidecar (validated and bound to the model before any work); needed by the sidecar "
                   "calibrations.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The INT8 ONNX file to write.")
@click.option("--calibration", default=QuantizeConfig.calibration, show_default=True,
              help="Calibration inputs: sidecar (first-layer Gaussian draws where the sidecar allows them, else a "
                   "short reconstruction), sidecar-gaussian, sidecar-reconstruct, noise (uniform over the input "
                   "domain), or data:SPEC (real data, for comparison; SPEC is " + DATA_HELP + ")")
@click.option("--samples", type=click.IntRange(min=1), default=QuantizeConfig.samples, show_default=True,
              help="Calibration inputs, class-balanced.")
@click.option("--batch-size", type=click.IntRange(min=1), default=QuantizeConfig.batch_size, show_default=True,
              help="Calibration inputs per batch (ONNX Runtime calibrates one batch at a time).")
@click.option("--calibrate-method", "method", type=click.Choice(list(CALIBRATION_METHODS)),
              default=QuantizeConfig.method, show_default=True, help="ONNX Runtime's calibrator of activation ranges.")
@click.option("--per-channel/--per-tensor", default=QuantizeConfig.per_channel, show_default=True,
              help="One weight scale per output channel, or one per tensor.")
@click.option("--correct", "corrections", type=click.Choice(list(CORRECTIONS)), multiple=True,
              help="DFQ corrections before quantising (repeatable): equalise (cross-layer weight equalisation), "
                   "bias (bias correction from the sidecar's layer means). See docs/quantize.md for what each was "
                   "worth.")
@click.option("--reconstruct-steps", type=click.IntRange(min=0), default=QuantizeConfig.reconstruct_steps,
              show_default=True, help="Steps of the short reconstruction, where calibration inputs are reconstructed.")
@click.option("--seed", type=int, default=QuantizeConfig.seed, show_default=True,
              help="Seed of the calibration inputs (each batch is made from the seed and its index).")
@click.option("--input-norm", help="How the teacher takes raw values, for a teacher whose metadata does not say: "
                                   + CONVENTION_HELP)
@click.option("--list-in-card", is_flag=True,
              help="List the INT8 model in the release's model card (its README.md; the output must be in the "
                   "teacher's release folder), so that validate checks it belongs to the release.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@DEVICE
@QUIET
@read_limit_options
def quantize(model, sidecar, output, calibration, samples, batch_size, method, per_channel, corrections,
             reconstruct_steps, seed, input_norm, list_in_card, as_json, device, quiet):
    """Quantise a teacher to INT8 without its data (ONNX Runtime static quantisation, QDQ).

    \b
    Examples:
      dfkd-meta quantize --model release/teacher.onnx --sidecar release/teacher.dfkd.h5 -o teacher.int8.onnx
      dfkd-meta quantize --model release/teacher.onnx --sidecar release/teacher.dfkd.h5 \\
          -o release/teacher.int8.onnx --list-in-card
      dfkd-meta quantize --model release/teacher.onnx --calibration data:mnist:DATA/mnist --per-tensor \\
          --correct equalise --correct bias -o teacher.int8.onnx --json
    """
    from dfkd_meta.quantize import quantize_release

    cfg = QuantizeConfig(calibration=calibration, samples=samples, batch_size=batch_size, method=method,
                         per_channel=per_channel, corrections=tuple(corrections), reconstruct_steps=reconstruct_steps,
                         seed=seed, input_norm=input_norm)
    log = None if quiet or as_json else (lambda msg: click.echo(msg, err=True))
    r = quantize_release(model, output, cfg, sidecar=sidecar, device=device, list_in_card=list_in_card,
                         log=log).report
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    c = r["on_calibration_inputs"]
    click.echo(f"wrote {r['output']}: INT8 ({r['quantization']['calibration']}, {samples} inputs, {method}), "
               f"{r['int8_bytes'] / 1e6:.2f} MB from {r['float_bytes'] / 1e6:.2f} MB; agrees with the float teacher on "
               f"{c['top1_agreement']:.1%} of the calibration inputs, {r['seconds']:.1f} s"
               + ("; listed in the release's model card" if list_in_card else ""))
