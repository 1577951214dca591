"""``camdeploy info``."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a model's inputs, outputs and metadata",
                       description="Show the inputs, outputs, precision and camdeploy metadata of an ONNX file. "
                       "Exit status 1 for a file that is missing, empty or not ONNX.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from camdeploy import graph
    from camdeploy.errors import CamdeployError
    from camdeploy.metadata import PREFIX, ModelSpec

    info = {"file": args.model, **graph.describe(graph.load(args.model, weights=False))}
    metadata: dict[str, str] = info["metadata"]  # type: ignore[assignment]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    try:
        spec: ModelSpec | None = ModelSpec.from_props(metadata, source=args.model)
    except CamdeployError:
        spec = None
    origin = (f"{spec.source_model}, camdeploy {spec.camdeploy_version}" if spec else
              "no camdeploy metadata (not written by `camdeploy export`)")
    print(f"{args.model}: {origin}, opset {info['opset'] or '?'}, {info['precision']}")
    for kind in ("inputs", "outputs"):
        print(f"{kind}:")
        for v in info[kind]:  # type: ignore[attr-defined]
            print(f"  {v['name']:<12} {v['type']:<8} [{', '.join(map(str, v['shape']))}]")
    print("metadata:")
    for key, value in metadata.items():
        if key == PREFIX + "class_names" and spec:
            names = spec.class_names
            value = f"{len(names)} names: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
        print(f"  {key}: {value}")
    return 0
