"""``camdeploy eval``."""

from __future__ import annotations

import argparse
from pathlib import Path

from camdeploy.cli.common import DEFAULT_MODEL, Renamed, add_backend, add_runner_options, runner_options
from camdeploy.errors import CamdeployError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="localization and classification metrics on an annotated dataset",
        description="Evaluate a model on images with ground-truth classes and boxes: top-1/top-5 "
        "classification and localization error (ILSVRC rule, IoU >= 0.5) and the box metrics of --protocol: "
        "camdeploy's GT-known localization at tau and MaxBoxAccV2 (the default), or wsolevaluation's "
        "MaxBoxAcc (v1) and MaxBoxAccV2, computed as clovaai/wsolevaluation computes them. With --compare, run "
        "several backends on the same images and report how much they agree, and the metric deltas against the "
        "first (the PyTorch reference when it is among them).")
    p.add_argument("--data", required=True, help="annotations: a folder holding annotations.json, a .json, "
                   "a .csv (file,class_index,x0,y0,x1,y1 or LOC_val_solution.csv), a folder of VOC .xml files, "
                   "or a folder with wsolevaluation's image_ids.txt/class_labels.txt/localization.txt")
    p.add_argument("--images", help="image root, where the annotations' paths are relative to it")
    p.add_argument("--format", choices=("json", "voc", "loc", "wsol", "csv"), help="annotation format "
                   "(default: detected)")
    p.add_argument("--onnx", help="MODEL.onnx to evaluate (default: the cached export of a built-in --model)")
    add_backend(p)
    p.add_argument("--compare", nargs="+", metavar="BACKEND",
                   help="two or more of: ort, torch, tensorrt, or another .onnx file (run on ONNX Runtime)")
    p.add_argument("--loc-rule", choices=("paper", "ilsvrc"), default="paper",
                   help="how CAMs become localization guesses: paper, the largest region above tau (default); "
                   "ilsvrc, the CAM paper's loose and tight boxes for the top-3 classes")
    p.add_argument("--protocol", choices=("camdeploy", "wsolevaluation"), default="camdeploy",
                   help="box metrics: camdeploy, GT-known loc at the box threshold tau (gt_known_loc_tau) and "
                   "camdeploy's MaxBoxAccV2 (maxboxacc_v2_camdeploy) (default); wsolevaluation, MaxBoxAcc v1 and "
                   "MaxBoxAccV2 (maxboxacc_v1, maxboxacc_v2) with clovaai/wsolevaluation's conventions, comparable "
                   "with published figures (needs a 224x224 model and --resize stretch)")
    p.add_argument("--wsol-step", type=float, help="CAM threshold step of --protocol wsolevaluation (default "
                   "0.001, its cam_curve_interval; its evaluation.py command line uses 0.01)")
    p.add_argument("--box-mode", dest="loc_rule", choices=("paper", "ilsvrc"), action=Renamed, new="--loc-rule",
                   help=argparse.SUPPRESS)
    add_runner_options(p)
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG of BoxAcc against CAM threshold here (the 'plot' extra)")
    p.add_argument("--batch-size", type=int, default=16, help="images per inference (default 16)")
    p.add_argument("--resize", choices=("stretch", "crop"), help="image resize (default: the model's)")
    p.add_argument("--limit", type=int, help="only the first N images (a quick look; report on all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from camdeploy.eval.datasets import open_dataset
    from camdeploy.eval.evaluate import EvalOptions, evaluate_models
    from camdeploy.eval.report import format_table, plot, write_json

    if args.wsol_step is not None and args.protocol != "wsolevaluation":
        raise CamdeployError(f"--wsol-step {args.wsol_step}: applies to --protocol wsolevaluation only (the "
                             f"{args.protocol} protocol's CAM thresholds are fixed at 0.00..0.99)")
    onnx_path = args.onnx
    if onnx_path is None:
        from camdeploy.cache import cached_export
        from camdeploy.models import BUILTIN_MODELS

        name = args.torch_model or DEFAULT_MODEL
        if name not in BUILTIN_MODELS:
            raise CamdeployError(f"--model {name}: without --onnx, only a built-in model can be exported on the fly "
                                 f"({', '.join(BUILTIN_MODELS)}); export yours with `camdeploy export` and pass --onnx")
        onnx_path = str(cached_export(name))
    if args.compare and len(args.compare) < 2:
        raise CamdeployError(f"--compare {' '.join(args.compare)}: expected two or more backends")
    if args.limit is not None and args.limit < 1:
        raise CamdeployError(f"--limit {args.limit}: expected a positive number of images")
    options = EvalOptions(batch_size=args.batch_size, loc_rule=args.loc_rule, resize=args.resize,
                          limit=args.limit, progress=not args.no_progress, protocol=args.protocol,
                          **({"wsol_step": args.wsol_step} if args.wsol_step is not None else {}))
    dataset = open_dataset(args.data, args.images, args.format)
    report, config = evaluate_models(onnx_path, args.compare or [args.backend], dataset, options,
                                     runner_options(args, args.batch_size))
    print(format_table(report))
    for name, entry in config.items():
        print(f"{name}: {entry['execution']}, boxes from the {entry['box_source']}")
    if args.json:
        write_json(report, config, args.json)
        print(f"JSON in {args.json}")
    if args.plot:
        print(f"plot in {args.plot}" if plot(report, args.plot) else "no plot: matplotlib is not installed "
              "(the 'plot' extra)")
    return 0
