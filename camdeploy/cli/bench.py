"""``camdeploy bench``."""

from __future__ import annotations

import argparse
from pathlib import Path

from camdeploy.cli.common import add_runner_options, ints, runner_options
from camdeploy.errors import CamdeployError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="latency of each backend against the PyTorch reference",
        description="Measure latency per backend and batch size, in two scopes: model (a preprocessed batch to "
        "the outputs) and end-to-end (image files to results.jsonl). The PyTorch reference is always measured in "
        "the same run, rows taking turns; every row shows its ratio to it, median to median, minimum to minimum "
        "and CPU time to CPU time. Model scope adds, per backend: [no maps] (boxes without the CAM output), "
        "[classes only] (no CAM head: what CAMs and boxes cost) and the other box source. torchcam's hook-based "
        "CAM is a peer row when installed (the 'bench' extra). Needs the 'export' extra.")
    p.add_argument("models", metavar="MODEL.onnx", nargs="+", help="exported models to run on ONNX Runtime")
    p.add_argument("--images", nargs="+", help="image files or folders (default: the demo photos)")
    p.add_argument("--backend", choices=("ort", "tensorrt"), action="append", help="backends to measure beside the "
                   "PyTorch reference (default ort; repeat for several); tensorrt needs an NVIDIA GPU and adds a "
                   "[device clock] row timed with CUDA events")
    p.add_argument("--batch-sizes", type=ints, default=(1, 8, 32), help="comma-separated (default 1,8,32)")
    p.add_argument("--scopes", default="model,end-to-end", help="model, end-to-end or both (default both)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per row, model scope (default 20)")
    p.add_argument("--e2e-images", type=int, default=32, help="images per end-to-end run (default 32)")
    p.add_argument("--e2e-repeats", type=int, default=5, help="end-to-end runs per row (default 5)")
    add_runner_options(p)
    p.add_argument("--no-torchcam", action="store_true", help="leave out the torchcam peer row")
    p.add_argument("--no-variants", action="store_true", help="leave out the [no maps], [classes only], "
                   "[no maps, full-res] and other-box-source rows")
    p.add_argument("--json", type=Path, help="write the report as JSON here")
    p.add_argument("--plot", type=Path, help="write a PNG of latency bars here (the 'plot' extra)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from camdeploy.atomic import write_json
    from camdeploy.bench.bench import SCOPES, BenchOptions, format_table, plot, run_bench
    from camdeploy.runtime.inputs import list_images

    scopes = tuple(s.strip() for s in args.scopes.split(",") if s.strip())
    for scope in scopes:
        if scope not in SCOPES:
            raise CamdeployError(f"--scopes {args.scopes}: expected model, end-to-end or both")
    if args.images:
        images = list_images(args.images)
    else:
        from camdeploy.demo import demo_photos

        images = demo_photos()
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise CamdeployError("bench always measures the PyTorch reference: install the 'export' extra") from exc
    options = BenchOptions(batch_sizes=args.batch_sizes, scopes=scopes, warmup=args.warmup, repeats=args.repeats,
                           e2e_images=args.e2e_images, e2e_repeats=args.e2e_repeats,
                           backends=tuple(dict.fromkeys(args.backend or ["ort"])),
                           runner=runner_options(args, max(args.batch_sizes)), torchcam=not args.no_torchcam,
                           variants=not args.no_variants)
    report = run_bench([Path(m) for m in args.models], images, options)
    print(format_table(report))
    if args.json:
        write_json(args.json, report.as_dict(), label=f"--json {args.json}")
        print(f"JSON in {args.json}")
    if args.plot:
        print(f"plot in {args.plot}" if plot(report, args.plot) else "no plot: matplotlib is not installed "
              "(the 'plot' extra)")
    return 0
