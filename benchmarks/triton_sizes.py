"""What a Triton response weighs per image: every output, against only classes, scores and boxes.

    python benchmarks/triton_sizes.py [--model lite0.onnx] [--images DIR] [--count 64]

Runs the exported model on ONNX Runtime (CPU) over real images, one image per request, and encodes
each image's outputs the way Triton's HTTP/REST server does (KServe v2 protocol), for every output
and for the subsets a client needs:

* binary: the binary tensor data extension, raw little-endian bytes after a JSON header;
* JSON: the tensors in the header's "data" arrays, numbers written as Triton's server writes them
  (rapidjson: each float32 widened to double, shortest round-trip digits, decimal notation for
  exponents -6..20; Python's shortest digits stand in for rapidjson's Grisu2, which agree but in
  rare cases).

Every response body is decoded with tritonclient's own parser (InferenceServerClient.parse_response_body)
and must equal the ONNX Runtime outputs exactly, so the bodies measured are ones a client reads back.
The request that asks for the small set is built with tritonclient's InferRequestedOutput. No server
runs: only the encodings are measured. Writes benchmarks/results/TRITON.md (needs the 'triton' extra,
and the 'export' extra when --model is not given).
"""

from __future__ import annotations

import argparse
import decimal
import gzip
import hashlib
import json
import platform
import statistics
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SMALL = ("classes", "scores", "boxes")
SETS = {"every output": None, "classes + scores + boxes": SMALL,
        "classes + scores + boxes + boxes_exact": (*SMALL, "boxes_exact")}
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}


def json_double(value: float) -> str:
    """A float as rapidjson's Writer::Double writes it (Triton's HTTP server widens FP32 to double)."""
    if value == 0:
        return "-0.0" if np.signbit(value) else "0.0"
    sign, digits_tuple, k = decimal.Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple))
    assert isinstance(k, int)
    kk = len(digits) + k  # 10^(kk-1) <= |value| < 10^kk
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    else:
        text = (digits if len(digits) == 1 else digits[0] + "." + digits[1:]) + f"e{kk - 1}"
    return ("-" if sign else "") + text


def json_data(array: np.ndarray) -> str:
    """The "data" array of a JSON response: the tensor flattened in row-major order."""
    if array.dtype == np.bool_:
        items = ("true" if v else "false" for v in array.ravel())
    elif array.dtype == np.int64:
        items = (str(int(v)) for v in array.ravel())
    else:
        items = (json_double(float(v)) for v in array.ravel())
    return "[" + ",".join(items) + "]"


def response(outputs: dict[str, np.ndarray], texts: dict[str, str], names: list[str], binary: bool, model: str
             ) -> tuple[bytes, int]:
    """A Triton HTTP inference response body for ``names`` (``texts``: their JSON data arrays), and
    the length of its JSON header."""
    entries, blobs = [], []
    for name in names:
        array = outputs[name]
        entry = {"name": name, "datatype": DATATYPES[array.dtype], "shape": list(array.shape)}
        if binary:
            blobs.append(np.ascontiguousarray(array).tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
            entries.append(json.dumps(entry, separators=(",", ":")))
        else:
            entries.append(json.dumps(entry, separators=(",", ":"))[:-1] + ',"data":' + texts[name] + "}")
    header = f'{{"model_name":"{model}","model_version":"1","outputs":[' + ",".join(entries) + "]}"
    return header.encode() + b"".join(blobs), len(header.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="exported .onnx (default: the cached export of efficientnet_lite0)")
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared/data/imagenet-val/dev/images")
    parser.add_argument("--count", type=int, default=64, help="images, the first in name order (default 64)")
    parser.add_argument("--name", default="lite0", help="the model name each response carries (default lite0)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "TRITON.md")
    args = parser.parse_args()

    import onnxruntime as ort
    import tritonclient.http as httpclient

    from camdeploy.metadata import read_spec
    from camdeploy.runtime.images import load_image, prepare
    from camdeploy.runtime.inputs import list_images

    if args.model is None:
        from camdeploy.cache import cached_export

        args.model = cached_export("efficientnet_lite0")
    spec = read_spec(str(args.model))
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if not set(SMALL) <= set(names):
        raise SystemExit(f"{args.model}: no {', '.join(sorted(set(SMALL) - set(names)))} output; export it with "
                         "boxes in the graph (camdeploy export --graph-boxes on)")
    paths = list_images([str(args.images)])[: args.count]

    sizes: dict[tuple[str, str], list[int]] = {}  # (set, measure) -> one value per image
    per_output: dict[tuple[str, str], list[int]] = {}
    checked = 0
    for path in paths:
        x, _ = prepare(load_image(path), spec)
        outputs = dict(zip(names, session.run(names, {"images": x[None]}), strict=True))
        texts = {name: json_data(array) for name, array in outputs.items()}
        for name in names:
            per_output.setdefault((name, "binary"), []).append(outputs[name].nbytes)
            per_output.setdefault((name, "json"), []).append(len(texts[name]))
        for label, subset in SETS.items():
            wanted = list(subset or names)
            for binary in (True, False):
                body, header = response(outputs, texts, wanted, binary, args.name)
                kind = "binary" if binary else "json"
                tensors = sum(outputs[n].nbytes if binary else len(texts[n]) for n in wanted)
                sizes.setdefault((label, f"{kind} tensors"), []).append(tensors)
                sizes.setdefault((label, f"{kind} body"), []).append(len(body))
                sizes.setdefault((label, f"{kind} body gzip"), []).append(len(gzip.compress(body, mtime=0)))
                result = httpclient.InferenceServerClient.parse_response_body(
                    body, header_length=header if binary else None)
                for name in wanted:  # what a client decodes is exactly what ONNX Runtime returned
                    decoded = result.as_numpy(name)
                    assert decoded.dtype == outputs[name].dtype and np.array_equal(decoded, outputs[name]), name
                    checked += 1

    request_inputs = [httpclient.InferInput("images", [1, 3, spec.input_height, spec.input_width], "FP32")]
    request_inputs[0].set_data_from_numpy(np.zeros((1, 3, spec.input_height, spec.input_width), np.float32))
    request_outputs = [httpclient.InferRequestedOutput(name, binary_data=True) for name in SMALL]
    request_body, request_header = httpclient.InferenceServerClient.generate_request_body(
        request_inputs, outputs=request_outputs)

    def cell(label: str, measure: str) -> str:
        values = sizes[(label, measure)]
        mean = statistics.fmean(values)
        spread = f" ({min(values):,}-{max(values):,})" if min(values) != max(values) else ""
        return f"{mean:,.0f}{spread}"

    command = " ".join(["python benchmarks/triton_sizes.py", *sys.argv[1:]])
    shape = {name: list(array.shape) for name, array in outputs.items()}
    datatype = {name: DATATYPES[array.dtype] for name, array in outputs.items()}
    shown = args.images.relative_to(REPO.parent) if args.images.is_relative_to(REPO.parent) else args.images
    digest = hashlib.sha256(args.model.read_bytes()).hexdigest()[:12]
    lines = [
        "# Triton responses: bytes per image", "",
        f"Generated by `{command}` on {len(paths)} images of `../{shown}` (the first in name order), one image per "
        f"request, model `{args.model.name}` served as `{args.name}` ({spec.source_model}, "
        f"{spec.input_height}x{spec.input_width}, top-{spec.topk}; sha256 {digest}...), outputs from ONNX Runtime "
        f"{ort.__version__} on the CPU; tritonclient {metadata.version('tritonclient')}, "
        f"Python {platform.python_version()}.", "",
        "Every body was decoded by tritonclient's `InferenceServerClient.parse_response_body` and equals the ONNX "
        f"Runtime outputs exactly ({checked:,} tensors checked). No Triton server ran: these are the sizes of the "
        "encodings Triton's HTTP server uses (binary tensor data extension; JSON as its rapidjson writer formats "
        "numbers), measured on real outputs, not a capture of server traffic. Mean per image, range in brackets "
        "where images differ.", "",
        "| outputs requested | tensors, binary | tensors, JSON | response body, binary | response body, JSON "
        "| binary body, gzip |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label in SETS:
        lines.append(f"| {label} | {cell(label, 'binary tensors')} | {cell(label, 'json tensors')} | "
                     f"{cell(label, 'binary body')} | {cell(label, 'json body')} | {cell(label, 'binary body gzip')} |")
    every, small = (statistics.fmean(sizes[(label, "binary body")]) for label in list(SETS)[:2])
    every_json, small_json = (statistics.fmean(sizes[(label, "json body")]) for label in list(SETS)[:2])
    lines += [
        "", f"Asking for classes, scores and boxes makes a binary response {every / small:,.0f}x smaller "
        f"and a JSON one {every_json / small_json:,.0f}x smaller than asking for everything (Triton's default "
        "when a request names no outputs). Per output, one image:", "",
        "| output | datatype | shape | binary bytes | JSON bytes (mean) |", "|---|---|---|---:|---:|",
    ]
    for name in names:
        binary, text = (statistics.fmean(per_output[(name, kind)]) for kind in ("binary", "json"))
        lines.append(f"| {name} | {datatype[name]} | {shape[name]} | {binary:,.0f} | {text:,.0f} |")
    lines += [
        "", "`cams` ([T, S, S] float32 maps) and `features` ([C, h, w]) are almost all of it. `boxes_exact` (T "
        "bools) tells where the graph could not vouch for a box; a client that requests it can fetch `cams` for "
        "those rare images only (README, Reading the file from C++).", "",
        "The request for the small set, as tritonclient builds it (`InferRequestedOutput(name, binary_data=True)` "
        f"for each; the JSON header below is followed by the image as {len(request_body) - request_header:,} binary "
        "bytes of float32 pixels, which dominate the request either way):", "",
        "```json", request_body[:request_header].decode(), "```", "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
