"""``camdeploy check`` and ``camdeploy build``: TensorRT engines, with or without a GPU."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from camdeploy.cli.common import ints


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="would TensorRT accept this graph?",
        description="Parse a model with TensorRT's ONNX parser and list every node it rejects, then build a "
        "serialized engine with an optimization profile for the dynamic batch. Uses TensorRT for RTX (the "
        "'tensorrt-rtx' extra), whose parser and builder run without a GPU, or NVIDIA's tensorrt package. "
        "Exit status 1 when anything is rejected.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--target", choices=("tensorrt",), default="tensorrt", help="the runtime to check for")
    p.add_argument("--batch", type=ints, default=(1, 8, 32), help="min,opt,max batch of the profile (default 1,8,32)")
    p.add_argument("--no-build", action="store_true", help="parse only, do not build an engine")
    p.add_argument("--module", choices=("tensorrt_rtx", "tensorrt"), help="TensorRT module (default: whichever "
                   "is installed, TensorRT for RTX first)")
    p.set_defaults(func=cmd_check)

    b = sub.add_parser(
        "build", help="build (and cache) a TensorRT engine",
        description="Build a serialized TensorRT engine from an exported model, strongly typed (precision "
        "comes from the graph: an FP16 or a Q/DQ INT8 ONNX), with an optimization profile for the dynamic "
        "batch, and store it in the engine cache (<cache>/tensorrt, keyed by the ONNX file's hash, the "
        "TensorRT version, the GPU and these options) and at --output. TensorRT for RTX builds without a GPU.")
    b.add_argument("model", metavar="MODEL.onnx")
    b.add_argument("--output", type=Path, help="also write the engine here (e.g. MODEL.plan)")
    b.add_argument("--rtx", action="store_true", help="build with TensorRT for RTX (tensorrt_rtx) even when "
                   "NVIDIA's tensorrt is installed")
    b.add_argument("--batch", type=ints, default=(1, 8, 32), help="min,opt,max batch of the profile (default 1,8,32)")
    b.add_argument("--tf32", action="store_true", help="allow TF32 in float32 layers (off: closer to the "
                   "fp32 reference)")
    b.set_defaults(func=cmd_build)


def cmd_check(args: argparse.Namespace) -> int:
    from camdeploy.graph import load
    from camdeploy.runtime.tensorrt_engine import check_batch_profile, check_tensorrt

    batch = check_batch_profile(args.batch)
    load(args.model, weights=False)  # any readable ONNX file, or a clear error
    report = check_tensorrt(args.model, build=not args.no_build, batch=batch, module=args.module)
    print(f"{args.model}: checked with {report.module} {report.version}")
    for issue in report.issues:
        print(f"  rejected: node {issue.node} ({issue.operator}): {issue.description}")
    if report.build_error:
        print(f"  engine build failed: {report.build_error}")
    if report.engine_bytes is not None:
        print(f"  engine built: {report.engine_bytes / 2**20:.1f} MiB, batch profile {','.join(map(str, batch))}")
    if report.ok:
        print("  OK: TensorRT's parser accepts every node" + ("" if args.no_build else " and the engine builds"))
    return 0 if report.ok else 1


def cmd_build(args: argparse.Namespace) -> int:
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.tensorrt_engine import EngineOptions, build_engine, check_batch_profile

    options = EngineOptions(batch=check_batch_profile(args.batch), module="tensorrt_rtx" if args.rtx else None,
                            tf32=args.tf32)
    read_spec(args.model)  # a readable camdeploy model, or a clear error
    start = time.perf_counter()
    built = build_engine(args.model, options, output=args.output)
    how = "from the engine cache" if built.cached else f"built in {time.perf_counter() - start:.1f} s"
    print(f"{built.path}: {built.module} {built.version} engine, {how}; GPU: {built.gpu}; batch profile "
          f"{','.join(map(str, options.batch))}; {built.path.stat().st_size / 2**20:.1f} MiB")
    return 0
