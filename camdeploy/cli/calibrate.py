"""``camdeploy calibrate`` (INT8) and ``camdeploy convert`` (FP16)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from camdeploy.errors import CamdeployError

if TYPE_CHECKING:
    from camdeploy.metadata import ModelSpec


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="INT8 (Q/DQ) variant of an exported model",
        description="Quantize an exported model to INT8 with Q/DQ nodes (ONNX Runtime static quantization), "
        "calibrated on images that must not be evaluation images. Only the backbone is quantized: the "
        "linear head and the CAM head stay float32. Before the model is written, it is run beside the float "
        "model on images held back from the draw, as `camdeploy run` would run it on this machine, and refused "
        "below --min-agreement. The calibration files are recorded in the model, and `camdeploy eval` refuses to "
        "evaluate it on any of them.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--images", required=True, nargs="+", help="calibration image files or folders")
    p.add_argument("--output", required=True, type=Path, help="where to write the INT8 .onnx")
    p.add_argument("--method", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="calibration method (default minmax)")
    p.add_argument("--count", type=int, default=300, help="calibration images drawn from --images (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="tensorrt: symmetric int8, zero points 0 (default; run as simulated int8 on a CPU, which is "
                   "what TensorRT computes); cpu: uint8 activations, which ONNX Runtime's CPU kernels run fast but "
                   "TensorRT refuses")
    p.add_argument("--reduce-range", action="store_true", help="weights in 7 bits: ONNX Runtime's fast U8S8 "
                   "kernels are then exact on CPUs without VNNI too (default: 8 bits; such CPUs then run exact but "
                   "slower U8U8 kernels)")
    p.add_argument("--exclude-data", help="an evaluation dataset (as for eval --data) whose images must not be "
                   "used for calibration; they are left out of the draw")
    p.add_argument("--verify-count", type=int, default=100, help="images held back from the draw (at most a fifth of "
                   "it) on which the INT8 model must agree with the float one before it is written (default 100; "
                   "0: no verification)")
    p.add_argument("--min-agreement", type=float, default=0.9, help="least top-1 agreement with the float model on "
                   "the held-back images (default 0.9)")
    p.add_argument("--force", action="store_true", help="write the model even when it fails the verification")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)

    c = sub.add_parser(
        "convert", help="FP16 variant of an exported model",
        description="Convert an exported model's backbone to float16, keeping float32 inputs and outputs and "
        "the linear and CAM heads (softmax, min-max normalisation) in float32.")
    c.add_argument("model", metavar="MODEL.onnx")
    c.add_argument("--fp16", action="store_true", required=True, help="convert to float16 (the only conversion)")
    c.add_argument("--output", required=True, type=Path, help="where to write the FP16 .onnx")
    c.add_argument("--fp16-head", action="store_true", help="convert the heads to float16 too")
    c.set_defaults(func=cmd_convert)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from camdeploy.lock import hold_file
    from camdeploy.metadata import read_spec

    if not 0.0 <= args.min_agreement <= 1.0:
        raise CamdeployError(f"--min-agreement {args.min_agreement}: expected a fraction in [0, 1], e.g. 0.9")
    spec = read_spec(args.model)
    with hold_file(args.output):  # the draw and the verification take minutes: refuse a second writer first
        return _calibrate(args, spec)


def _calibrate(args: argparse.Namespace, spec: ModelSpec) -> int:
    from camdeploy.calibration.data import CalibrationData, draw_images
    from camdeploy.calibration.quantize import Int8Config, quantize_int8
    from camdeploy.calibration.verify import compare_models, refuse_disagreement

    excluded: list[Path] = []
    if args.exclude_data:
        from camdeploy.eval.datasets import open_dataset

        excluded = [s.path for s in open_dataset(args.exclude_data).samples]
    draw = draw_images(args.images, args.count, args.seed, excluded, args.verify_count)

    def verify(candidate: Path) -> dict[str, str]:
        agreement = compare_models(args.model, candidate, draw.verification, spec)
        print(f"verified: {agreement.describe()}")
        try:
            refuse_disagreement(agreement, args.min_agreement)
        except CamdeployError as exc:
            if not args.force:
                raise
            print(f"camdeploy calibrate: warning: {exc}; written anyway (--force)", file=sys.stderr)
        return agreement.as_props()

    start = time.perf_counter()
    quantize_int8(args.model, args.output, CalibrationData(draw.ranges, spec, progress=not args.no_progress),
                  Int8Config(method=args.method, target=args.target, reduce_range=args.reduce_range),
                  verify=verify if draw.verification else None)
    unverified = "" if draw.verification else "; not verified (--verify-count 0)"
    print(f"wrote {args.output}: INT8 Q/DQ ({args.target}), {args.method} calibration on {len(draw.ranges)} images, "
          f"in {time.perf_counter() - start:.1f} s{unverified}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from camdeploy.calibration.quantize import convert_fp16
    from camdeploy.metadata import read_spec

    read_spec(args.model)  # a camdeploy model, or a clear error
    convert_fp16(args.model, args.output, keep_head_fp32=not args.fp16_head)
    print(f"wrote {args.output}: FP16 backbone{'' if args.fp16_head else ', float32 heads'}, float32 inputs/outputs")
    return 0
