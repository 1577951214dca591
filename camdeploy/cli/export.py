"""``camdeploy export``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from camdeploy.cli.common import DEFAULT_MODEL, Renamed, triple
from camdeploy.errors import CamdeployError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a classifier with its CAM head to ONNX",
        description="Export a GAP (or GMP) classifier to one self-contained ONNX file whose outputs "
        "are logits, features, classes, scores and cams (and boxes, boxes_exact with the box rule in the graph), "
        "then verify it against PyTorch on ONNX Runtime. Needs the 'export' extra. Ctrl-C leaves no file behind.")
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
    norm.add_argument("--mean", type=triple, help="R,G,B mean, torchvision convention: pixels "
                      "scaled to [0,1], then (x - mean) / std; default for user models: ImageNet's "
                      "0.485,0.456,0.406 with --std 0.229,0.224,0.225")
    norm.add_argument("--scale", type=triple, help="R,G,B: x = pixel(0..255) * scale + offset, "
                      "for other conventions (give --offset too)")
    p.add_argument("--std", type=triple, help="R,G,B standard deviation, with --mean")
    p.add_argument("--offset", type=triple, help="R,G,B offset, with --scale")
    p.add_argument("--labels", help="class names, one per line in class-index order, or 'imagenet' "
                   "for the bundled ImageNet-1k list (default: ImageNet for built-in models, "
                   "'class i' otherwise)")
    p.add_argument("--box-threshold", type=float, default=0.2,
                   help="tau: boxes cover the largest region with cam >= tau * max (default 0.2)")
    p.add_argument("--resize", choices=("stretch", "crop"), default="stretch",
                   help="default image resize stored in the model (default: stretch)")
    p.add_argument("--graph-boxes", choices=("auto", "on", "off"), default="auto",
                   help="on: the box rule inside the graph too (outputs boxes, boxes_exact), exact and "
                   "TensorRT-compatible; off: boxes only by the runtime's OpenCV rule; auto (default): on unless the "
                   "map has more row segments than TensorRT's TopK allows (3840)")
    p.add_argument("--boxes", dest="graph_boxes", choices=("auto", "graph", "host"), action=Renamed,
                   new="--graph-boxes", translate={"graph": "on", "host": "off"}, help=argparse.SUPPRESS)
    p.add_argument("--feature-module", help="override: name of the last feature module")
    p.add_argument("--linear-module", help="override: name of the linear head")
    p.add_argument("--pooling", choices=("avg", "max"), help="global pooling (default: detected)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the ONNX checker and the ONNX Runtime vs PyTorch comparison")
    p.set_defaults(func=cmd_export)


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
    from camdeploy.atomic import check_onnx_output
    from camdeploy.lock import hold_file

    check_onnx_output(args.output)
    with hold_file(args.output):  # a second export to the same file is refused at once, not after loading
        return _export(args)


def _export(args: argparse.Namespace) -> int:
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
        pooling=args.pooling, graph_boxes=args.graph_boxes, verify=not args.no_verify))
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
