"""``camdeploy units``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from camdeploy.cli.common import MAX_BATCH, add_backend, add_runner_options, runner_options
from camdeploy.errors import CamdeployError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "units", help="what the units see: top images, thresholds, masks, Network Dissection, class units",
        description="Stream images through a model's features output and describe every unit of its last feature "
        "map: its top-k images (spatial maximum), its threshold (the exact top --quantile of every position of every "
        "image) and, for each top image, its mask (the map upsampled bilinearly, then > T). With --broden (pixel and "
        "image-level labels in the Broden layout) or --boxes (a localization data set's ground-truth boxes as object "
        "masks), dissect the units as NetDissect-Lite does: IoU of each unit with each concept, its label, and the "
        "detectors (IoU >= --iou-threshold). Writes OUT/index.html (montages, units by IoU), units.json, units.csv, "
        "tally.csv (NetDissect-Lite's columns), bargraph.svg, montages/, and compare.csv with --compare.",
        epilog="exit status: 0 done; 1 an error; 130 interrupted")
    p.add_argument("model", metavar="MODEL.onnx", help="a model written by `camdeploy export` (with a features output)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--broden", type=Path, metavar="DIR", help="a Broden-layout folder (index.csv, label.csv, "
                        "c_<category>.csv, images/): dissect against its concepts")
    source.add_argument("--boxes", metavar="DATA", help="a data set `camdeploy eval --data` reads (e.g. "
                        "../shared/data/imagenet-val/dev): dissect against its ground-truth boxes as masks, one "
                        "concept per class (box masks, not segmentation)")
    p.add_argument("--images", nargs="+", metavar="PATH", help="without --broden or --boxes: image files or folders "
                   "to analyse (no concepts: top images, thresholds, montages, class units); with --boxes: the image "
                   "root, for annotation formats whose paths are relative to it")
    p.add_argument("--format", choices=("json", "voc", "loc", "wsol", "csv"), help="with --boxes: annotation format "
                   "(default: detected)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the report already in --out")
    p.add_argument("--categories", help="with --broden: comma-separated categories (default: those NetDissect-Lite "
                   "dissects, object,part,scene,texture,color, that the data has)")
    p.add_argument("--top-k", type=int, default=10, help="top images per unit (default 10)")
    p.add_argument("--quantile", type=float, default=0.005, help="the top fraction of positions above each unit's "
                   "threshold (default 0.005)")
    p.add_argument("--iou-threshold", type=float, default=0.04, help="IoU from which a unit is a detector of its "
                   "concept (default 0.04)")
    p.add_argument("--min-images", type=int, default=1, help="images a concept must occur in to be a unit's label "
                   "(default 1: any concept, as NetDissect-Lite; in a small box data set, a class may occur in a "
                   "single image)")
    p.add_argument("--saturated", choices=("empty", "include"), default="empty", help="masks of units whose "
                   "threshold equals their largest value (their top --quantile lies at one value, e.g. ReLU6's "
                   "ceiling 6, so no position is > T): empty (default: NetDissect's > T) or include (>= T for "
                   "those units only)")
    p.add_argument("--mask-size", type=int, help="with --boxes: side of the box masks, in pixels over the model's "
                   "input (default: half the input side, as Broden's 112 for 224)")
    p.add_argument("--classes", help="comma-separated class indices: report each class's top units by W[c, k]")
    p.add_argument("--class-units", type=int, default=5, help="units per class of --classes (default 5)")
    p.add_argument("--compare", nargs="+", metavar="VARIANT.onnx", help="precision variants of MODEL (e.g. from "
                   "`camdeploy calibrate` and `camdeploy convert --fp16`), run on ONNX Runtime on the same images: per "
                   "unit, label kept or changed, IoU drift and threshold drift against MODEL")
    p.add_argument("--no-montages", action="store_true", help="no montages (numbers and report only)")
    p.add_argument("--tile-size", type=int, default=112, help="side of each image in a montage (default 112)")
    p.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    add_backend(p)
    add_runner_options(p)
    p.add_argument("--batch-size", type=int, default=16, help=f"images per inference (default 16, at most {MAX_BATCH})")
    p.add_argument("--resize", choices=("stretch", "crop"), help="image resize (default: stretch with --broden, whose "
                   "labels cover the whole image; else the model's)")
    p.add_argument("--max-pixels", type=int, help="largest image to decode, in pixels (default 100000000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_units)


def _classes(text: str | None, count: int) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise CamdeployError(f"--classes {text!r}: expected comma-separated class indices, e.g. 207,281") from None
    bad = [v for v in values if not 0 <= v < count]
    if bad:
        raise CamdeployError(f"--classes {text}: {bad[0]} is not a class of MODEL; expected 0..{count - 1}")
    return values


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.batch_size <= MAX_BATCH:
        raise CamdeployError(f"--batch-size {args.batch_size}: expected 1 to {MAX_BATCH}")
    for flag, value in (("--top-k", args.top_k), ("--class-units", args.class_units), ("--tile-size", args.tile_size),
                        ("--limit", args.limit), ("--mask-size", args.mask_size),
                        ("--min-images", args.min_images), ("--max-pixels", args.max_pixels)):
        if value is not None and value < 1:
            raise CamdeployError(f"{flag} {value}: expected a positive number")
    if not 0 < args.quantile < 1:
        raise CamdeployError(f"--quantile {args.quantile}: expected a fraction between 0 and 1, e.g. 0.005")
    if not 0 <= args.iou_threshold <= 1:
        raise CamdeployError(f"--iou-threshold {args.iou_threshold}: expected an IoU between 0 and 1, e.g. 0.04")
    if args.broden and args.images:
        raise CamdeployError("--images with --broden: Broden's images are those of its index.csv; drop --images")
    if args.boxes and args.images and len(args.images) > 1:
        raise CamdeployError(f"--images {' '.join(args.images)} with --boxes: expected one image root folder")
    if not (args.broden or args.boxes or args.images):
        raise CamdeployError("no images: give --images PATH..., --broden DIR or --boxes DATA")
    if args.categories and not args.broden:
        raise CamdeployError(f"--categories {args.categories}: an option of --broden")
    if args.mask_size and not args.boxes:
        raise CamdeployError(f"--mask-size {args.mask_size}: an option of --boxes (Broden's masks have their own size)")
    if (args.out / "units.json").exists() and not args.overwrite:
        raise CamdeployError(f"--out {args.out}: already holds a units report (units.json); add --overwrite to replace "
                             "it, or choose another folder")


def cmd_units(args: argparse.Namespace) -> int:
    from camdeploy.atomic import file_sha256
    from camdeploy.backends import make_runner
    from camdeploy.metadata import read_spec
    from camdeploy.runtime.inputs import list_inputs
    from camdeploy.units.analysis import UnitsOptions, analyse_units
    from camdeploy.units.compare import compare_units
    from camdeploy.units.concepts import ConceptSource, image_source, read_boxes, read_broden
    from camdeploy.units.report import ReportOptions, write_report

    _check(args)
    model = Path(args.model)
    spec = read_spec(model)
    classes = _classes(args.classes, len(spec.class_names))
    source: ConceptSource
    if args.broden:
        categories = tuple(c for c in args.categories.split(",") if c) if args.categories else None
        source = read_broden(args.broden, categories)
    elif args.boxes:
        mask = ((args.mask_size, args.mask_size) if args.mask_size
                else (max(1, spec.input_height // 2), max(1, spec.input_width // 2)))
        source = read_boxes(args.boxes, spec.class_names, (spec.input_height, spec.input_width), mask,
                            args.images[0] if args.images else None, args.format)
    else:
        listing = list_inputs(args.images)
        out = args.out.resolve()
        files = [f for f in listing.files if out not in f.resolve().parents]
        if not files:
            raise CamdeployError(f"--images {' '.join(args.images)}: no images found (outside --out {args.out})")
        source = image_source(files)
    if args.limit:
        source.images = source.images[:args.limit]
    options = runner_options(args, args.batch_size)
    runners = [make_runner(args.backend, model, dataclasses.replace(options, outputs="classes"), spec)]
    for variant in args.compare or []:
        runners.append(make_runner("ort", variant, dataclasses.replace(options.for_backend("ort"),
                                                                     outputs="classes")))
    units_options = UnitsOptions(top_k=args.top_k, quantile=args.quantile, iou_threshold=args.iou_threshold,
                                 min_images=args.min_images, saturated=args.saturated, workers=args.threads,
                                 batch_size=args.batch_size, resize=args.resize, max_pixels=args.max_pixels,
                                 progress=not args.no_progress)
    opened = []
    try:
        for runner in runners:
            runner.open()
            opened.append(runner)
        analysis = analyse_units(runners, source, args.out, units_options)
    finally:
        for runner in opened:
            runner.close()
    comparisons = [compare_units(analysis.models[0], m) for m in analysis.models[1:]]
    resize = args.resize or source.resize or spec.resize
    settings = {"top_k": args.top_k, "quantile": args.quantile, "iou_threshold": args.iou_threshold,
                "min_images": args.min_images, "saturated": args.saturated,
                "resize": resize, "input_size": [spec.input_height, spec.input_width], "batch_size": args.batch_size,
                "backend": args.backend, "mask_size": list(getattr(source, "mask_size", ())) or None,
                "limit": args.limit}
    model_info: dict[str, object] = {
        "path": str(model.resolve()), "sha256": file_sha256(model), "source_model": spec.source_model,
        "variants": [{"path": str(Path(v).resolve()), "sha256": file_sha256(v)} for v in args.compare or []]}
    report = ReportOptions(montages=not args.no_montages, tile=args.tile_size, classes=classes,
                           class_units=args.class_units)
    document = write_report(analysis, args.out, report, model_info=model_info, class_names=spec.class_names,
                            settings=settings, comparisons=comparisons)
    summary = document["summary"]
    read = len(analysis.images)
    print(f"{read} images, {analysis.models[0].units} units"
          f"{'' if not analysis.skipped else f' ({len(analysis.skipped)} images left out, see units.json)'}")
    if summary is not None:
        print(summary["sentence"])  # type: ignore[index]
    saturated = int(analysis.models[0].saturated.sum())
    if saturated:
        rule = ("their masks are >= T (--saturated include)" if args.saturated == "include" else
                "their masks are empty under NetDissect's > T; --saturated include masks them with >= T")
        print(f"{saturated} units have a threshold equal to their largest value (e.g. an activation's ceiling); "
              f"{rule}")
    for comparison in comparisons:
        print(comparison["summary"]["sentence"])  # type: ignore[index]
    print(f"report in {args.out / 'index.html'}", file=sys.stderr)
    return 0
