"""``camdeploy demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from camdeploy.cli.common import DEFAULT_MODEL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the default model on bundled photos, with overlays",
        description="Export EfficientNet-Lite0 with its CAM head (once, into the cache folder), run "
        "it on photos bundled with scikit-image, write overlays and results.jsonl, and print a "
        "table. Needs the 'export' (first run) and 'demo' extras.")
    p.add_argument("--out", type=Path, default=Path("camdeploy-demo"),
                   help="output folder (default: ./camdeploy-demo; its results are replaced)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from camdeploy.cache import cached_export
    from camdeploy.demo import demo_photos
    from camdeploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from camdeploy.runtime.pipeline import RunOptions, run_files

    photos = demo_photos()
    model = cached_export(DEFAULT_MODEL)
    with OnnxRuntimeRunner(model) as runner:
        summary = run_files(runner, photos, args.out, RunOptions(overlays=True, progress=False, overwrite=True))
    print(f"{'file':<22} {'top class':<24} {'score':>6}  box [x0, y0, x1, y1]")
    for line in summary.results_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        box = ", ".join(f"{v:.0f}" for v in record["boxes"][0])
        print(f"{Path(record['file']).name:<22} {record['labels'][0]:<24} "
              f"{record['scores'][0]:>6.3f}  [{box}]")
    print(f"model {model}\noverlays and results.jsonl in {args.out}/")
    return 0
