"""Arguments shared by several commands, and turning them into library options."""

from __future__ import annotations

import argparse
from pathlib import Path

from camdeploy.backends import BACKENDS, RunnerOptions
from camdeploy.console import warn

DEFAULT_MODEL = "efficientnet_lite0"
MAX_BATCH = 512

SubParsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


def triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers R,G,B") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers R,G,B, got {len(values)}")
    return values  # type: ignore[return-value]


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,8,32") from None


class Renamed(argparse.Action):
    """A flag's former name: still accepted, with a one-line warning naming the new one."""

    def __init__(self, *args: object, new: str, translate: dict[str, str] | None = None, **kwargs: object):
        self.new, self.translate = new, translate or {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        value = self.translate.get(str(values), values)
        warn(f"{option_string} is now {self.new}" + (f" {value}" if self.translate else "") + "; the old name will go")
        setattr(namespace, self.dest, value)


def add_box_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box-source", choices=("auto", "graph", "host"), default="auto",
                   help="where boxes come from: graph (the model's boxes output), host (OpenCV on the CAMs), or "
                   "auto (default): the faster for the backend, host on ONNX Runtime CPU, graph on GPUs")
    p.add_argument("--box-path", dest="box_source", choices=("auto", "graph", "host"), action=Renamed,
                   new="--box-source", help=argparse.SUPPRESS)


def add_int8(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", choices=("auto", "simulate", "kernels"), default="auto",
                   help="how ONNX Runtime runs an INT8 (Q/DQ) model: simulate (float math on dequantized values, what "
                   "TensorRT computes), kernels (ONNX Runtime's int8 kernels, exact on every CPU: U8U8 where a CPU "
                   "without VNNI would saturate), auto (default): simulate for models calibrated for TensorRT, "
                   "kernels for those calibrated for the CPU")


def add_runner_options(p: argparse.ArgumentParser, *, torch_model: bool = True, engine_alias: bool = True) -> None:
    """Threads, box threshold and source, INT8 execution, provider, TensorRT and reference options.

    ``engine_alias``: accept ``--engine PLAN``, the former name of ``--plan`` (``run`` gives
    ``--engine`` to the choice of engine, local or Ray, and handles the former use itself)."""
    p.add_argument("--threads", type=int, help="intra-op threads of every backend (default: the CPUs this process "
                   "may use)")
    p.add_argument("--box-threshold", type=float, help="tau of the box rule (default: the model's)")
    add_box_source(p)
    add_int8(p)
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu); an unavailable one is an error")
    p.add_argument("--device", help="where --backend torch runs: cpu (default), cuda or cuda:N (PyTorch eager on "
                   "that GPU, in IEEE fp32); the GPU of --backend tensorrt: cuda or cuda:N (default cuda:0); "
                   "--backend ort chooses with --provider")
    p.add_argument("--plan", dest="engine", type=Path, metavar="ENGINE.plan", help="with --backend tensorrt: a "
                   "prebuilt engine (`camdeploy build --output`) instead of the engine cache")
    if engine_alias:
        p.add_argument("--engine", dest="engine", type=Path, action=Renamed, new="--plan", help=argparse.SUPPRESS)
    p.add_argument("--rtx", action="store_true", help="with --backend tensorrt: use TensorRT for RTX "
                   "(tensorrt_rtx) even when NVIDIA's tensorrt is installed")
    if torch_model:
        p.add_argument("--model", dest="torch_model", help="the PyTorch model of --backend torch (built-in name or "
                       "module:callable; default: the model MODEL.onnx was exported from)")
        p.add_argument("--feature-module", help="with --backend torch: contract override")
        p.add_argument("--linear-module", help="with --backend torch: contract override")


def runner_options(args: argparse.Namespace, batch: int = 8) -> RunnerOptions:
    """:class:`RunnerOptions` from the arguments of :func:`add_runner_options`."""
    return RunnerOptions(threads=args.threads, box_threshold=args.box_threshold, box_source=args.box_source,
                         provider=args.provider, int8=args.int8, batch=(1, batch, max(batch, 32)),
                         engine=args.engine, rtx=args.rtx, torch_model=getattr(args, "torch_model", None),
                         feature_module=getattr(args, "feature_module", None),
                         linear_module=getattr(args, "linear_module", None), device=args.device)


def add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="ort",
                   help="ort: the ONNX graph on ONNX Runtime (default); torch: the PyTorch reference, with "
                   "preprocessing, T and threshold from MODEL.onnx; tensorrt: a TensorRT engine built from "
                   "MODEL.onnx and cached (needs an NVIDIA GPU)")
