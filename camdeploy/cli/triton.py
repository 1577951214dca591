"""``camdeploy triton``: write a Triton Inference Server model repository for an exported graph.

Only argparse here: :mod:`camdeploy.hosts.triton` (onnx, and tritonclient for the schema) is
imported when the command runs, so that ``camdeploy --help`` stays light.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``triton`` subcommand."""
    p = subparsers.add_parser(
        "triton", help="write a Triton Inference Server model repository",
        description="Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (Triton's ONNX Runtime backend), or "
        "1/model.plan (platform tensorrt_plan) with --plan. Inputs, outputs, data types and dims come from the graph; "
        "the config also sets dynamic batching, an instance group, warm-up requests, and the model's camdeploy "
        "metadata as parameters (so that a client learns the preprocessing). The config is built with Triton's own "
        "schema and checked against the graph before the folder is moved into place. Needs the 'triton' extra.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export` (or calibrate, convert)")
    p.add_argument("--repo", required=True, type=Path, help="the model repository folder (created if missing)")
    p.add_argument("--name", help="model name and folder (default: MODEL's file name without .onnx)")
    p.add_argument("--max-batch", type=int, default=32, help="max_batch_size, the largest batch the dynamic batcher "
                   "forms (default 32; with --plan, at most the engine profile's max batch)")
    p.add_argument("--device", choices=("cpu", "gpu"), help="instance kind (default: gpu with --plan, else cpu)")
    p.add_argument("--instances", type=int, default=1, help="model instances per device (default 1)")
    p.add_argument("--tensorrt-fp16", action="store_true", help="with --device gpu: ONNX Runtime's TensorRT "
                   "accelerator in FP16, with an engine cache and a batch profile 1..--max-batch")
    p.add_argument("--engine-cache", metavar="DIR", help="with --tensorrt-fp16: the engine cache folder on the "
                   "server (default /tmp/triton-trt-cache/NAME, lost with the container)")
    p.add_argument("--plan", type=Path, metavar="ENGINE.plan", help="serve this TensorRT engine, built from MODEL "
                   "with the server's TensorRT version (`camdeploy build MODEL --output ENGINE.plan`), instead of "
                   "the ONNX file; MODEL still gives the tensors and metadata")
    p.add_argument("--force", action="store_true", help="replace an existing REPO/NAME folder")
    p.set_defaults(func=cmd_triton)


def _dims(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, dims)) + "]"


def cmd_triton(args: argparse.Namespace) -> int:
    from camdeploy.hosts.triton import TritonOptions, write_repository

    written = write_repository(args.model, args.repo, TritonOptions(
        name=args.name, max_batch=args.max_batch, device=args.device, instances=args.instances,
        tensorrt_fp16=args.tensorrt_fp16, plan=args.plan, engine_cache=args.engine_cache, force=args.force))
    kind = f"backend {written.serving}" if written.serving == "onnxruntime" else f"platform {written.serving}"
    accelerator = ", TensorRT FP16 accelerator" if written.tensorrt_fp16 else ""
    print(f"{'replaced' if written.replaced else 'wrote'} {written.model_dir}: {written.config_path.name} "
          f"({kind}{accelerator}) and {written.model_path.relative_to(written.model_dir)}")
    print(f"  max_batch_size {written.max_batch}, preferred batches "
          f"{','.join(map(str, written.preferred_batch_sizes)) or 'none'}, {written.instances} "
          f"{written.device.upper()} instance{'s' if written.instances > 1 else ''} per device")
    print("  inputs:  " + ", ".join(f"{t.name} {t.data_type[5:]} {_dims(t.dims)}" for t in written.inputs))
    print("  outputs: " + ", ".join(f"{t.name} {t.data_type[5:]} {_dims(t.dims)}" for t in written.outputs))
    print(f"  checked against the graph with Triton's model_config schema; serve it with: "
          f"tritonserver --model-repository {args.repo}")
    return 0
