"""The ``camdeploy`` command line. Heavy modules are imported inside each command, so that
``--help`` and the runtime commands never import torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import camdeploy
from camdeploy.errors import CamdeployError

DEFAULT_MODEL = "efficientnet_lite0"
MAX_BATCH = 512


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers R,G,B") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers R,G,B, got {len(values)}")
    return values  # type: ignore[return-value]


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a classifier with its CAM head to ONNX",
        description="Export a GAP (or GMP) classifier to one self-contained ONNX file whose outputs "
        "are logits, features, classes, scores and cams, then verify it against PyTorch on ONNX "
        "Runtime. Needs the 'export' extra.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="built-in name (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) "
                   "or module:callable returning an nn.Module, importable from the working "
                   f"directory (default: {DEFAULT_MODEL})")
    p.add_argument("--output", required=True, type=Path, help="where to write the .onnx file")
    p.add_argument("--topk", type=int, help="T: classes whose CAMs the graph returns (default 5, or K if the "
                   "model has fewer classes)")
    p.add_argument("--input-size", type=int, help="input side S in pixels (default: the built-in "
                   "model's native size, 224 for user models)")
    norm = p.add_mutually_exclusive_group()
    norm.add_argument("--mean", type=_triple, help="R,G,B mean, torchvision convention: pixels "
                      "scaled to [0,1], then (x - mean) / std; default for user models: ImageNet's "
                      "0.485,0.456,0.406 with --std 0.229,0.224,0.225")
    norm.add_argument("--scale", type=_triple, help="R,G,B: x = pixel(0..255) * scale + offset, "
                      "for other conventions (give --offset too)")
    p.add_argument("--std", type=_triple, help="R,G,B standard deviation, with --mean")
    p.add_argument("--offset", type=_triple, help="R,G,B offset, with --scale")
    p.add_argument("--labels", help="class names, one per line in class-index order, or 'imagenet' "
                   "for the bundled ImageNet-1k list (default: ImageNet for built-in models, "
                   "'class i' otherwise)")
    p.add_argument("--box-threshold", type=float, default=0.2,
                   help="tau: boxes cover the largest region with cam >= tau * max (default 0.2)")
    p.add_argument("--resize", choices=("stretch", "crop"), default="stretch",
                   help="default image resize stored in the model (default: stretch)")
    p.add_argument("--boxes", choices=("auto", "graph", "host"), default="auto",
                   help="graph: the box rule inside the graph too (outputs boxes, boxes_exact), exact and "
                   "TensorRT-compatible; host: boxes only by the runtime's OpenCV rule; auto (default): graph "
                   "unless the map has more row segments than TensorRT's TopK allows (3840)")
    p.add_argument("--feature-module", help="override: name of the last feature module")
    p.add_argument("--linear-module", help="override: name of the linear head")
    p.add_argument("--pooling", choices=("avg", "max"), help="global pooling (default: detected)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX checker and the ONNX Runtime vs PyTorch comparison")
    p.set_defaults(func=cmd_export)


def _add_int8(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", choices=("auto", "simulate", "kernels"), default="auto",
                   help="how ONNX Runtime runs an INT8 (Q/DQ) model: simulate (float math on dequantized values, what "
                   "TensorRT computes), kernels (ONNX Runtime's int8 kernels, exact on every CPU: U8U8 where a CPU "
                   "without VNNI would saturate), auto (default): simulate for models calibrated for TensorRT, "
                   "kernels for those calibrated for the CPU")


def _add_box_path(p: argparse.ArgumentParser) -> None:
    p.add_argument("--box-path", choices=("auto", "graph", "host"), default="auto",
                   help="where boxes come from: graph (the model's boxes output), host (OpenCV on the CAMs), or "
                   "auto (default): the faster for the backend, host on ONNX Runtime CPU, graph on GPUs")


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", type=Path, help="with --backend tensorrt: a prebuilt engine (`camdeploy build "
                   "--output`) instead of the engine cache")
    p.add_argument("--rtx", action="store_true", help="with --backend tensorrt: use TensorRT for RTX "
                   "(tensorrt_rtx) even when NVIDIA's tensorrt is installed")


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="build (and cache) a TensorRT engine",
        description="Build a serialized TensorRT engine from an exported model, strongly typed (precision "
        "comes from the graph: an FP16 or a Q/DQ INT8 ONNX), with an optimization profile for the dynamic "
        "batch, and store it in the engine cache (<cache>/tensorrt, keyed by the ONNX file's hash, the "
        "TensorRT version, the GPU and these options) and at --output. TensorRT for RTX builds without a GPU.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--output", type=Path, help="also write the engine here (e.g. MODEL.plan)")
    p.add_argument("--rtx", action="store_true", help="build with TensorRT for RTX (tensorrt_rtx) even when "
                   "NVIDIA's tensorrt is installed")
    p.add_argument("--batch", type=_ints, default=(1, 8, 32), help="min,opt,max batch of the profile "
                   "(default 1,8,32)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in float32 layers (off: closer to the "
                   "fp32 reference)")
    p.set_defaults(func=cmd_build)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="classify images and localise each top class",
        description="Run an exported model over images; write OUT/results.jsonl with one object "
        "per image: file, classes, labels, scores and boxes ([x0,y0,x1,y1] per class in original "
        "pixels, pixel-edge coordinates). Unreadable files are reported and skipped.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export`")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--backend", choices=("ort", "torch", "tensorrt"), default="ort",
                   help="ort: the ONNX graph on ONNX Runtime (default); torch: the PyTorch "
                   "reference, with preprocessing, T and threshold from MODEL.onnx; tensorrt: a TensorRT "
                   "engine built from MODEL.onnx and cached (needs an NVIDIA GPU)")
    p.add_argument("--model", dest="torch_model",
                   help="with --backend torch: the PyTorch model (built-in name or "
                   "module:callable; default: the model MODEL.onnx was exported from)")
    p.add_argument("--feature-module", help="with --backend torch: contract override")
    p.add_argument("--linear-module", help="with --backend torch: contract override")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu); an unavailable one is an error")
    p.add_argument("--threads", type=int, help="intra-op threads of either backend (default: the CPUs this "
                   "process may use)")
    p.add_argument("--batch-size", type=int, default=8, help=f"images per inference (default 8, at most "
                   f"{MAX_BATCH}; about 2 MB of memory per image and class of T)")
    p.add_argument("--resize", choices=("stretch", "crop"),
                   help="image resize (default: the mode stored in MODEL.onnx)")
    p.add_argument("--box-threshold", type=float, help="override the model's tau")
    _add_box_path(p)
    _add_int8(p)
    _add_engine_options(p)
    p.add_argument("--overlays", action="store_true",
                   help="also write a PNG per image with the top-1 heatmap, box and label")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's inputs, outputs and metadata",
                       description="Show the inputs, outputs and camdeploy metadata of an ONNX file.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the default model on bundled photos, with overlays",
        description="Export EfficientNet-Lite0 with its CAM head (once, into the cache folder), run "
        "it on photos bundled with scikit-image, write overlays and results.jsonl, and print a "
        "table. Needs the 'export' (first run) and 'demo' extras.")
    p.add_argument("--out", type=Path, default=Path("camdeploy-demo"),
                   help="output folder (default: ./camdeploy-demo)")
    p.set_defaults(func=cmd_demo)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    return values


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="localization and classification metrics on an annotated dataset",
        description="Evaluate a model on images with ground-truth classes and boxes: top-1/top-5 "
        "classification and localization error (ILSVRC rule, IoU >= 0.5), GT-known localization and "
        "MaxBoxAccV2 (wsolevaluation). With --compare, run several backends on the same images and "
        "report how much they agree, and the metric deltas against the first (the PyTorch reference "
        "when it is among them).")
    p.add_argument("--data", required=True, help="annotations: a folder holding annotations.json, a .json, "
                   "a .csv (file,class_index,x0,y0,x1,y1 or LOC_val_solution.csv), a folder of VOC .xml files, "
                   "or a folder with wsolevaluation's image_ids.txt/class_labels.txt/localization.txt")
    p.add_argument("--images", help="image root, where the annotations' paths are relative to it")
    p.add_argument("--format", choices=("json", "voc", "loc", "wsol", "csv"), help="annotation format "
                   "(default: detected)")
    p.add_argument("--onnx", help="MODEL.onnx to evaluate (default: the cached export of a built-in --model)")
    p.add_argument("--model", help="the PyTorch model for the torch backend, or a built-in name to export "
                   f"(default: the model MODEL.onnx came from; {DEFAULT_MODEL} when --onnx is not given)")
    p.add_argument("--backend", choices=("ort", "torch", "tensorrt"), default="ort",
                   help="backend to evaluate (default ort)")
    p.add_argument("--compare", nargs="+", metavar="BACKEND",
                   help="two or more of: ort, torch, tensorrt, or another .onnx file (run on ONNX Runtime)")
    p.add_argument("--box-mode", choices=("paper", "ilsvrc"), default="paper",
                   help="paper: the largest region above tau (default); ilsvrc: the CAM paper's "
                   "loose and tight boxes for the top-3 classes")
    p.add_argument("--box-threshold", type=float, help="tau of the box rule (default: the model's)")
    _add_box_path(p)
    _add_int8(p)
    _add_engine_options(p)
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG of BoxAcc against CAM threshold here")
    p.add_argument("--batch-size", type=int, default=16, help="images per inference (default 16)")
    p.add_argument("--resize", choices=("stretch", "crop"), help="image resize (default: the model's)")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="provider of the ONNX Runtime backends (default cpu)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the CPUs this process may use)")
    p.add_argument("--limit", type=int, help="only the first N images (a quick look; report on all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="latency of each backend against the PyTorch reference",
        description="Measure latency per backend and batch size, in two scopes: model (a preprocessed "
        "batch to all outputs including boxes) and end-to-end (image files to results.jsonl). The "
        "PyTorch reference is always measured in the same run; every row shows its speed-up against "
        "it. ort computes boxes on the host, ort-graph-boxes takes them from the graph (files exported with "
        "boxes in the graph), ort-backbone is the graph cut at logits, to show what CAM and boxes cost. torchcam's "
        "hook-based CAM is a peer row when installed (the 'bench' extra). Needs the 'export' extra.")
    p.add_argument("models", metavar="MODEL.onnx", nargs="+", help="exported models to run on ONNX Runtime")
    p.add_argument("--images", nargs="+", help="image files or folders (default: the demo photos)")
    p.add_argument("--model", help="the PyTorch reference model (default: the model MODEL.onnx came from)")
    p.add_argument("--batch-sizes", type=_ints, default=(1, 8, 32), help="comma-separated (default 1,8,32)")
    p.add_argument("--scopes", default="model,end-to-end", help="model, end-to-end or both (default both)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per row, model scope (default 20)")
    p.add_argument("--e2e-images", type=int, default=32, help="images per end-to-end run (default 32)")
    p.add_argument("--e2e-repeats", type=int, default=5, help="end-to-end runs per row (default 5)")
    p.add_argument("--threads", type=int, help="threads for every backend (default: the CPUs this process may use)")
    p.add_argument("--no-torchcam", action="store_true", help="leave out the torchcam peer row")
    _add_int8(p)
    p.add_argument("--backend", choices=("ort", "tensorrt"), action="append", help="the PyTorch reference and "
                   "ONNX Runtime are always measured; --backend tensorrt adds a TensorRT engine built from the first "
                   "MODEL.onnx: a tensorrt row (host clock, copies and boxes included) and a tensorrt-engine row "
                   "(CUDA events around the engine alone); needs an NVIDIA GPU")
    p.add_argument("--rtx", action="store_true", help="with --backend tensorrt: TensorRT for RTX")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG of latency bars here")
    p.set_defaults(func=cmd_bench)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
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
                   help="tensorrt: symmetric int8, zero points 0 (default); cpu: uint8 activations, which ONNX "
                   "Runtime's CPU kernels run fast but TensorRT refuses")
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


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="FP16 variant of an exported model",
        description="Convert an exported model's backbone to float16, keeping float32 inputs and outputs and "
        "the linear and CAM heads (softmax, min-max normalisation) in float32.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--fp16", action="store_true", required=True, help="convert to float16 (the only conversion)")
    p.add_argument("--output", required=True, type=Path, help="where to write the FP16 .onnx")
    p.add_argument("--fp16-head", action="store_true", help="convert the heads to float16 too")
    p.set_defaults(func=cmd_convert)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="would TensorRT accept this graph?",
        description="Parse a model with TensorRT's ONNX parser and list every node it rejects, then build a "
        "serialized engine with an optimization profile for the dynamic batch. Uses TensorRT for RTX (the "
        "'tensorrt-rtx' extra), whose parser and builder run without a GPU, or NVIDIA's tensorrt package. "
        "Exit status 1 when anything is rejected.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--target", choices=("tensorrt",), default="tensorrt", help="the runtime to check for")
    p.add_argument("--batch", type=_ints, default=(1, 8, 32), help="min,opt,max batch of the profile (default 1,8,32)")
    p.add_argument("--no-build", action="store_true", help="parse only, do not build an engine")
    p.add_argument("--module", choices=("tensorrt_rtx", "tensorrt"), help="TensorRT module (default: whichever "
                   "is installed, TensorRT for RTX first)")
    p.set_defaults(func=cmd_check)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camdeploy",
        description="Deploy GAP CNN classifiers with class activation maps and boxes computed in "
        "the exported graph.")
    parser.add_argument("--version", action="version", version=f"camdeploy {camdeploy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_export, _add_run, _add_info, _add_demo, _add_eval, _add_bench, _add_calibrate,
                _add_convert, _add_check, _add_build):
        add(sub)
    __import__("camdeploy.hosts.triton_cli", fromlist=["add_parser"]).add_parser(sub)
    return parser


def _normalization(args: argparse.Namespace):  # -> Normalization | None
    from camdeploy.metadata import Normalization

    if (args.mean or args.std) and (args.scale or args.offset):
        raise CamdeployError("--mean/--std and --scale/--offset are two ways to give the normalisation; "
                             "give one pair")
    if args.mean or args.std:
        if not (args.mean and args.std):
            raise CamdeployError("--mean and --std go together; give both (e.g. ImageNet's "
                                 "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
        return Normalization.from_mean_std(args.mean, args.std)
    if args.scale or args.offset:
        if not (args.scale and args.offset):
            raise CamdeployError("--scale and --offset go together; give both")
        return Normalization(args.scale, args.offset)
    return None


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from camdeploy.export.exporter import ExportOptions, export_onnx
        from camdeploy.export.sources import load_model
    except ImportError as exc:
        raise CamdeployError(f"export needs PyTorch ({exc}); install the 'export' extra: "
                             "pip install 'camdeploy[export]'") from exc
    from camdeploy.labels import imagenet_classes, read_labels

    source = load_model(args.model, input_size=args.input_size, normalization=_normalization(args))
    if args.labels == "imagenet" or (args.labels is None and source.imagenet):
        names: tuple[str, ...] | None = tuple(imagenet_classes())
    else:
        names = tuple(read_labels(args.labels)) if args.labels else None
    start = time.perf_counter()
    report = export_onnx(source.module, args.output, ExportOptions(
        input_size=source.input_size, normalization=source.normalization, class_names=names,
        topk=args.topk, box_threshold=args.box_threshold, source_model=source.name,
        resize=args.resize, feature_module=args.feature_module, linear_module=args.linear_module,
        pooling=args.pooling, boxes=args.boxes, verify=not args.no_verify))
    print(f"wrote {report.path} ({report.path.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")
    print(f"  contract: {report.contract}, global {report.spec.pooling} pooling, "
          f"{len(report.spec.class_names)} classes, input {report.spec.input_height}x"
          f"{report.spec.input_width}, top-{report.spec.topk}")
    print(f"  {report.boxes_note}")
    if report.max_abs_error:
        errors = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_error.items())
        print(f"  verified on ONNX Runtime against PyTorch, max |diff|: {errors}")
    return 0


def _open_runner(args: argparse.Namespace):  # -> Runner
    from camdeploy.metadata import read_spec

    spec = read_spec(args.model)
    if args.backend == "torch":
        from camdeploy.runtime.torch_runner import TorchRunner

        if args.provider != "cpu":
            raise CamdeployError(f"--provider {args.provider} selects an ONNX Runtime provider; the torch "
                                 "reference runs on the CPU (use --backend ort)")
        return TorchRunner(args.torch_model or spec.source_model, spec, args.box_threshold,
                           args.feature_module, args.linear_module, args.threads)
    if args.torch_model or args.feature_module or args.linear_module:
        raise CamdeployError("--model, --feature-module and --linear-module describe the PyTorch model for "
                             f"--backend torch; with --backend {args.backend} the graph in MODEL.onnx is run")
    if args.backend == "tensorrt":
        return _tensorrt_runner(args, args.model, spec, args.batch_size)
    if args.engine or args.rtx:
        raise CamdeployError("--engine and --rtx are options of --backend tensorrt")
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(args.model, args.provider, args.threads, args.box_threshold, spec, args.box_path,
                             int8=args.int8)


def _tensorrt_runner(args: argparse.Namespace, model: str, spec: object, batch_size: int):  # -> TensorRTRunner
    from camdeploy.runtime.tensorrt_runner import EngineOptions, TensorRTRunner

    if args.provider != "cpu":
        raise CamdeployError(f"--provider {args.provider} selects an ONNX Runtime provider; --backend tensorrt "
                             "runs TensorRT itself")
    options = EngineOptions(batch=(1, batch_size, max(batch_size, 32)), module="tensorrt_rtx" if args.rtx else None)
    return TensorRTRunner(model, options, args.box_threshold, spec, args.engine, args.box_path)  # type: ignore[arg-type]


def cmd_run(args: argparse.Namespace) -> int:
    from camdeploy.runtime.images import list_images
    from camdeploy.runtime.pipeline import RunOptions, run_files

    if not 1 <= args.batch_size <= MAX_BATCH:
        raise CamdeployError(f"--batch-size {args.batch_size}: expected 1 to {MAX_BATCH}")
    out = args.out.resolve()
    paths = [p for p in list_images(args.inputs) if out not in p.resolve().parents]  # not our own overlays
    if not paths:
        raise CamdeployError(f"INPUT {' '.join(args.inputs)}: no images outside --out {args.out}")
    runner = _open_runner(args)
    options = RunOptions(batch_size=args.batch_size, resize=args.resize, overlays=args.overlays,
                         progress=not args.no_progress)
    with runner:
        summary = run_files(runner, paths, args.out, options)
    done = len(summary.records)
    if done:
        print(f"{done} images in {summary.seconds:.2f} s ({1000 * summary.seconds / done:.1f} ms/image, "
              f"backend {args.backend}); results in {summary.results_path}")
    if summary.failures:
        print(f"{len(summary.failures)} files skipped (see the warnings above)")
    if not done:
        print(f"camdeploy run: error: none of the {len(paths)} images could be read", file=sys.stderr)
    return 0 if done else 1


def cmd_info(args: argparse.Namespace) -> int:
    import onnx

    from camdeploy.metadata import PREFIX, ModelSpec

    try:
        model = onnx.load(args.model, load_external_data=False)
    except FileNotFoundError:
        raise CamdeployError(f"MODEL {args.model}: no such file") from None
    except Exception as exc:
        raise CamdeployError(f"MODEL {args.model}: not a readable ONNX file ({exc})") from exc
    props = {p.key: p.value for p in model.metadata_props}
    try:
        spec: ModelSpec | None = ModelSpec.from_props(props, source=args.model)
    except CamdeployError:
        spec = None

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            tensor = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": v.name, "type": onnx.helper.tensor_dtype_to_np_dtype(
                tensor.elem_type).name, "shape": dims})
        return out

    info = {"file": args.model, "inputs": describe(model.graph.input),
            "outputs": describe(model.graph.output),
            "metadata": {p.key: p.value for p in model.metadata_props}}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default="?")
    origin = (f"{spec.source_model}, camdeploy {spec.camdeploy_version}" if spec else
              "no camdeploy metadata (not written by `camdeploy export`)")
    print(f"{args.model}: {origin}, opset {opset}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:
            print(f"  {v['name']:<10} {v['type']:<8} [{', '.join(map(str, v['shape']))}]")
    print("metadata:")
    for key, value in info["metadata"].items():
        if key == PREFIX + "class_names" and spec:
            names = spec.class_names
            value = f"{len(names)} names: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        print(f"  {key}: {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from camdeploy.demo import cached_export, demo_photos
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from camdeploy.runtime.pipeline import RunOptions, run_files

    photos = demo_photos()
    model = cached_export(DEFAULT_MODEL)
    with OnnxRuntimeRunner(model) as runner:
        summary = run_files(runner, photos, args.out, RunOptions(overlays=True, progress=False))
    print(f"{'file':<22} {'top class':<24} {'score':>6}  box [x0, y0, x1, y1]")
    for record in summary.records:
        box = ", ".join(f"{v:.0f}" for v in record["boxes"][0])
        print(f"{Path(record['file']).name:<22} {record['labels'][0]:<24} "
              f"{record['scores'][0]:>6.3f}  [{box}]")
    print(f"model {model}\noverlays and results.jsonl in {args.out}/")
    return 0


def _versions() -> dict[str, str]:
    import cv2
    import numpy as np
    import onnxruntime

    versions = {"camdeploy": camdeploy.__version__, "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__, "opencv": cv2.__version__}
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    return versions


def cmd_eval(args: argparse.Namespace) -> int:
    from camdeploy.eval.datasets import open_dataset
    from camdeploy.eval.evaluate import EvalOptions, evaluate
    from camdeploy.eval.report import format_table, plot, write_json
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner, graph_precision
    from camdeploy.runtime.runner import Runner

    onnx_path = args.onnx
    if onnx_path is None:
        from camdeploy.demo import cached_export
        from camdeploy.models.efficientnet_lite import VARIANTS

        name = args.model or DEFAULT_MODEL
        if name not in VARIANTS:
            raise CamdeployError(f"--model {name}: without --onnx, only a built-in model can be exported on the fly "
                                 f"({', '.join(VARIANTS)}); export yours with `camdeploy export` and pass --onnx")
        onnx_path = str(cached_export(name))
    spec = read_spec(onnx_path)
    wanted = args.compare or [args.backend]
    if args.compare and len(args.compare) < 2:
        raise CamdeployError(f"--compare {' '.join(args.compare)}: expected two or more backends")
    wanted = sorted(wanted, key=lambda b: b != "torch")  # the reference, when present, is the baseline
    runners: dict[str, Runner] = {}
    config: dict[str, dict[str, object]] = {}
    common = {"box_mode": args.box_mode, "input_size": [spec.input_height, spec.input_width]}
    for backend in wanted:
        if backend == "torch":
            from camdeploy.runtime.torch_runner import TorchRunner

            model = args.model or spec.source_model
            runners["torch"] = TorchRunner(model, spec, args.box_threshold, threads=args.threads)
            config["torch"] = {"model": model, "backend": "torch", "provider": "cpu", "precision": "fp32"}
        elif backend == "tensorrt":
            runners["tensorrt"] = _tensorrt_runner(args, onnx_path, spec, args.batch_size)
            config["tensorrt"] = {"model": str(onnx_path), "backend": "tensorrt", "provider": "tensorrt",
                                  "precision": graph_precision(str(onnx_path))}
        elif backend == "ort" or backend.endswith(".onnx"):
            path = onnx_path if backend == "ort" else backend
            name = "ort" if backend == "ort" else Path(backend).name
            runners[name] = OnnxRuntimeRunner(path, args.provider, args.threads, args.box_threshold,
                                              box_path=args.box_path, int8=args.int8)
            config[name] = {"model": str(path), "backend": "ort", "provider": args.provider,
                            "precision": graph_precision(str(path))}
        else:
            raise CamdeployError(f"--compare {backend}: expected ort, torch, tensorrt or a path ending in .onnx")
    dataset = open_dataset(args.data, args.images, args.format)
    from camdeploy.calibration.data import refuse_overlap
    from camdeploy.calibration.quantize import calibration_files

    for name, config_entry in config.items():
        if config_entry["backend"] in ("ort", "tensorrt"):
            try:
                refuse_overlap(calibration_files(str(config_entry["model"])), [s.path for s in dataset.samples])
            except CamdeployError as exc:
                raise CamdeployError(f"{name}: {exc}") from None
    options = EvalOptions(batch_size=args.batch_size, box_mode=args.box_mode, resize=args.resize,
                          limit=args.limit, progress=not args.no_progress)
    opened: list[Runner] = []
    try:
        for runner in runners.values():
            runner.open()
            opened.append(runner)
        report = evaluate(runners, dataset, options)
    finally:
        for runner in opened:
            runner.close()
    for name, runner in runners.items():
        config[name].update(common, **runner.describe(), box_threshold=runner.box_threshold, versions=_versions())
    print(format_table(report))
    for name, entry in config.items():
        print(f"{name}: {entry['execution']}, boxes from the {entry['box_path']}")
    if args.json:
        write_json(report, config, args.json)
        print(f"JSON in {args.json}")
    if args.plot:
        print(f"plot in {args.plot}" if plot(report, args.plot) else "no plot: matplotlib is not installed "
              "(the 'bench' extra)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from camdeploy.bench.bench import SCOPES, BenchOptions, format_table, plot, run_bench
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.images import list_images

    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    for scope in scopes:
        if scope not in SCOPES:
            raise CamdeployError(f"--scopes {args.scopes}: expected model, end-to-end or both")
    if args.images:
        images = list_images(args.images)
    else:
        from camdeploy.demo import demo_photos

        images = demo_photos()
    spec = read_spec(args.models[0])
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CamdeployError("bench always measures the PyTorch reference: install the 'export' extra") from exc
    options = BenchOptions(batch_sizes=args.batch_sizes, scopes=scopes, warmup=args.warmup, repeats=args.repeats,
                           e2e_images=args.e2e_images, e2e_repeats=args.e2e_repeats, threads=args.threads,
                           torchcam=not args.no_torchcam, tensorrt="tensorrt" in (args.backend or ()),
                           rtx=args.rtx, int8=args.int8)
    report = run_bench([Path(m) for m in args.models], args.model or spec.source_model, images, options)
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=2))
        print(f"JSON in {args.json}")
    if args.plot:
        print(f"plot in {args.plot}" if plot(report, args.plot) else "no plot: matplotlib is not installed "
              "(the 'bench' extra)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from camdeploy.calibration.data import CalibrationData, draw_images
    from camdeploy.calibration.quantize import Int8Config, quantize_int8
    from camdeploy.calibration.verify import compare_models, refuse_disagreement
    from camdeploy.metadata import read_spec

    if not 0.0 <= args.min_agreement <= 1.0:
        raise CamdeployError(f"--min-agreement {args.min_agreement}: expected a fraction in [0, 1], e.g. 0.9")
    spec = read_spec(args.model)
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


def cmd_build(args: argparse.Namespace) -> int:
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.tensorrt_runner import EngineOptions, build_engine

    if len(args.batch) != 3:
        raise CamdeployError(f"--batch {','.join(map(str, args.batch))}: expected three numbers min,opt,max")
    if not Path(args.model).is_file():
        raise CamdeployError(f"MODEL {args.model}: no such file")
    read_spec(args.model)  # a camdeploy model, or a clear error
    options = EngineOptions(batch=tuple(args.batch), module="tensorrt_rtx" if args.rtx else None,  # type: ignore[arg-type]
                            tf32=args.tf32)
    start = time.perf_counter()
    built = build_engine(args.model, options, output=args.output)
    how = "from the engine cache" if built.cached else f"built in {time.perf_counter() - start:.1f} s"
    print(f"{built.path}: {built.module} {built.version} engine, {how}; GPU: {built.gpu}; batch profile "
          f"{','.join(map(str, args.batch))}; {built.path.stat().st_size / 2**20:.1f} MiB")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from camdeploy.runtime.tensorrt_check import check_tensorrt

    if len(args.batch) != 3:
        raise CamdeployError(f"--batch {args.batch}: expected three numbers min,opt,max")
    if not Path(args.model).is_file():
        raise CamdeployError(f"MODEL {args.model}: no such file")
    report = check_tensorrt(args.model, build=not args.no_build, batch=args.batch, module=args.module)
    print(f"{args.model}: checked with {report.module} {report.version}")
    for issue in report.issues:
        print(f"  rejected: node {issue.node} ({issue.operator}): {issue.description}")
    if report.build_error:
        print(f"  engine build failed: {report.build_error}")
    if report.engine_bytes is not None:
        print(f"  engine built: {report.engine_bytes / 2**20:.1f} MiB, batch profile {args.batch}")
    if report.ok:
        print("  OK: TensorRT's parser accepts every node" + ("" if args.no_build else " and the engine builds"))
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CamdeployError as exc:
        print(f"camdeploy {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("camdeploy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
