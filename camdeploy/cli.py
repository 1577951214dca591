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
    p.add_argument("--topk", type=int, default=5, help="T: classes whose CAMs the graph returns (default 5)")
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
    p.add_argument("--feature-module", help="override: name of the last feature module")
    p.add_argument("--linear-module", help="override: name of the linear head")
    p.add_argument("--pooling", choices=("avg", "max"), help="global pooling (default: detected)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX checker and the ONNX Runtime vs PyTorch comparison")
    p.set_defaults(func=cmd_export)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="classify images and localise each top class",
        description="Run an exported model over images; write OUT/results.jsonl with one object "
        "per image: file, classes, labels, scores and boxes ([x0,y0,x1,y1] per class in original "
        "pixels, pixel-edge coordinates). Unreadable files are reported and skipped.")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export`")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files or folders (recursive)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--backend", choices=("ort", "torch"), default="ort",
                   help="ort: the ONNX graph on ONNX Runtime (default); torch: the PyTorch "
                   "reference, with preprocessing, T and threshold from MODEL.onnx")
    p.add_argument("--model", dest="torch_model",
                   help="with --backend torch: the PyTorch model (built-in name or "
                   "module:callable; default: the model MODEL.onnx was exported from)")
    p.add_argument("--feature-module", help="with --backend torch: contract override")
    p.add_argument("--linear-module", help="with --backend torch: contract override")
    p.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                   help="ONNX Runtime execution provider (default cpu); an unavailable one is an error")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all CPUs)")
    p.add_argument("--batch-size", type=int, default=8, help="images per inference (default 8)")
    p.add_argument("--resize", choices=("stretch", "crop"),
                   help="image resize (default: the mode stored in MODEL.onnx)")
    p.add_argument("--box-threshold", type=float, help="override the model's tau")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camdeploy",
        description="Deploy GAP CNN classifiers with class activation maps and boxes computed in "
        "the exported graph.")
    parser.add_argument("--version", action="version", version=f"camdeploy {camdeploy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_export, _add_run, _add_info, _add_demo):
        add(sub)
    return parser


def _normalization(args: argparse.Namespace):  # -> Normalization | None
    from camdeploy.metadata import Normalization

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
        pooling=args.pooling, verify=not args.no_verify))
    print(f"wrote {report.path} ({report.path.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")
    print(f"  contract: {report.contract}, global {report.spec.pooling} pooling, "
          f"{len(report.spec.class_names)} classes, input {report.spec.input_height}x"
          f"{report.spec.input_width}, top-{report.spec.topk}")
    if report.max_abs_error:
        errors = ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_error.items())
        print(f"  verified on ONNX Runtime against PyTorch, max |diff|: {errors}")
    return 0


def _open_runner(args: argparse.Namespace):  # -> Runner
    from camdeploy.metadata import read_spec

    spec = read_spec(args.model)
    if args.backend == "torch":
        from camdeploy.runtime.torch_runner import TorchRunner

        return TorchRunner(args.torch_model or spec.source_model, spec, args.box_threshold,
                           args.feature_module, args.linear_module)
    if args.torch_model:
        raise CamdeployError("--model names the PyTorch model for --backend torch; "
                             "with --backend ort the graph in MODEL.onnx is run")
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(args.model, args.provider, args.threads, args.box_threshold, spec)


def cmd_run(args: argparse.Namespace) -> int:
    from camdeploy.runtime.images import list_images
    from camdeploy.runtime.pipeline import RunOptions, run_files

    paths = list_images(args.inputs)
    runner = _open_runner(args)
    options = RunOptions(batch_size=args.batch_size, resize=args.resize, overlays=args.overlays,
                         progress=not args.no_progress)
    with runner:
        summary = run_files(runner, paths, args.out, options)
    done = len(summary.records)
    print(f"{done} images in {summary.seconds:.2f} s ({1000 * summary.seconds / max(done, 1):.1f} "
          f"ms/image, backend {args.backend}); results in {summary.results_path}")
    if summary.failures:
        print(f"{len(summary.failures)} files skipped (see the warnings above)")
    return 0 if done else 1


def cmd_info(args: argparse.Namespace) -> int:
    import onnx

    from camdeploy.metadata import PREFIX, read_spec

    spec = read_spec(args.model)
    model = onnx.load(args.model, load_external_data=False)

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
    print(f"{args.model}: {spec.source_model}, camdeploy {spec.camdeploy_version}, opset "
          f"{max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:
            print(f"  {v['name']:<10} {v['type']:<8} [{', '.join(map(str, v['shape']))}]")
    print("metadata:")
    for key, value in info["metadata"].items():
        if key == PREFIX + "class_names":
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
