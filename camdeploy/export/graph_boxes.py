"""The box rule inside the ONNX graph: exact largest 8-connected component, in TensorRT-safe ops.

The host rule (:func:`camdeploy.runtime.boxes.cam_box`) thresholds each CAM at ``tau * max`` and
keeps the bounding box of the largest 8-connected component of the mask (ties: the component
whose first pixel comes first in raster order; no foreground at all: the whole frame). This
module builds the same rule from plain ONNX operators, so that the whole pipeline is one graph.

**Nodes instead of pixels.** The CAMs are bilinear upsamplings of ``[h, w]`` maps. Within one
output row, the columns that interpolate between the same two source columns (a *band*) carry a
linear function of the column, so the mask restricted to one band of one row is a single run of
pixels (or empty). Components are therefore computed over *row segments*: node ``(row, band)``
holds that run (first column, last column, pixel count), which is the mask at full resolution,
losslessly. For Lite0 at 224x224 that is 224 x 7 = 1568 nodes per map instead of 50176 pixels.
Rounding in the upsampling could in principle break a run in two (or detach it from its
band's ends) where the map is flat to the last bit at the threshold; the graph checks every run
(the sum of its column offsets must be that of a prefix or a suffix of the band) and reports,
per map, ``boxes_exact``: where it is false, the runtime falls back to the host rule for that
map. With bands of width 1 the nodes are single pixels and any map is handled exactly (used by
the tests on adversarial maps).

**Steps** (``M = N * T`` maps, ``P`` nodes per map, everything batched):

1. ``mask = cam >= float32(tau) * max(cam)``; one ``MatMul`` of the mask with a constant
   ``[W, 2 * bands]`` matrix gives the pixel count and the sum of column offsets of every node.
2. Node ``p`` and its 8 neighbours (same row, left and right band; row above and below, bands
   -1, 0, +1) are connected when both are non-empty and their column intervals touch or overlap
   (``lo' <= hi + 1`` and ``lo <= hi' + 1``): 8-connectivity of pixels, exactly.
3. Runs: nodes of one band linked row after row (vertical runs) and nodes of one row linked band
   after band (row runs) get their first and last node by pointer doubling, once. Labels start
   as the vertical run's last node + 1. Each round of a ``Loop``: every node takes the largest
   label among its diagonal neighbours (``Gather`` of a constant neighbour table), then the
   largest in its row run, then in its vertical run (sparse tables: two lookups cover any run),
   then labels jump (``label = label[label - 1]`` through ``GatherElements``). When no diagonal
   neighbour and no row run offers a larger label the loop stops (the rest of that round is
   skipped by an ``If``). Labels only grow and stay inside their component, and the fixed point
   is constant on each component: exact whatever the number of rounds, which is about the number
   of turns a component takes (at most 3 per batch of 16 images on a sample of 80 dev images).
4. Areas without scatter reductions (which TensorRT lacks): sort the nodes by label (``TopK``
   with ``K = P``, which TensorRT allows up to 3840), then doubling scans give each stretch of
   equal labels its pixel count; the stretch's last node is its first in raster order.
5. The winner has the largest area, then the smallest first pixel; its box is the min/max of its
   nodes' rows and columns, in pixel-edge coordinates of the map.

Operators used: ReduceMax/Min/Sum (axes as initializers), GreaterOrEqual, Cast, MatMul, Slice,
Pad, Concat, Split, Gather, GatherElements, Loop (condition-driven, no scan outputs), If, TopK
(K = P), Equal, Where, ArgMin, Reshape, Transpose, (Un)Squeeze and elementwise arithmetic: all
in onnx-tensorrt's support list; tests build a TensorRT(-RTX) engine from every variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from camdeploy.errors import CamdeployError

BOXES_OUTPUTS = ("boxes", "boxes_exact")
IR_VERSION = 8
"""IR version 8 (ONNX 1.10+): readable by every ONNX Runtime and TensorRT release we support."""
TENSORRT_TOPK_LIMIT = 3840
"""TensorRT's largest TopK K: the node count per map must stay at or below it for TensorRT."""


def upsample_bands(source: int, target: int) -> np.ndarray:
    """Band index of each of ``target`` output columns of a bilinear, half-pixel upsampling from
    ``source`` columns: the left source column it interpolates from (clamped)."""
    if target < source:
        raise CamdeployError(f"upsample_bands: {source} -> {target} is not an upsampling")
    position = (np.arange(target) + 0.5) * (source / target) - 0.5
    return np.minimum(np.floor(np.maximum(position, 0.0)), source - 1).astype(np.int64)


@dataclass(frozen=True)
class BandLayout:
    """Columns ``[start[b], stop[b])`` form band ``b``; bands tile ``0 .. width`` in order."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @classmethod
    def from_band_of_column(cls, band: np.ndarray) -> BandLayout:
        band = np.asarray(band)
        if band.ndim != 1 or band.size == 0 or (np.diff(band) < 0).any():
            raise CamdeployError("bands: expected a non-decreasing band index per column")
        edges = [0, *(np.flatnonzero(np.diff(band)) + 1).tolist(), int(band.size)]
        return cls(tuple(edges[:-1]), tuple(edges[1:]))

    @classmethod
    def pixels(cls, width: int) -> BandLayout:
        """One band per column: nodes are pixels."""
        return cls(tuple(range(width)), tuple(range(1, width + 1)))

    @property
    def width(self) -> int:
        return self.stop[-1]

    @property
    def count(self) -> int:
        return len(self.start)


class _Builder:
    """Collects nodes and initializers with unique names under a prefix."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value: npt.ArrayLike, hint: str = "c", dtype: type | None = None) -> str:
        """An initializer; arrays keep their dtype unless ``dtype`` is given, scalars are float32."""
        name = self.name(hint)
        if dtype is None:
            dtype = value.dtype.type if isinstance(value, np.ndarray) else np.float32
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, hint: str | None = None, outputs: int = 1,
           **attrs: Any) -> list[str]:
        """A node with ``outputs`` outputs; returns their names."""
        names = [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names

    def __call__(self, op_type: str, *inputs: str, hint: str | None = None, **attrs: Any) -> str:
        """A node with one output; returns its name."""
        return self.op(op_type, *inputs, hint=hint, **attrs)[0]


DIAGONAL_OFFSETS = ((-1, -1), (-1, 1), (1, -1), (1, 1))
"""(row, band) offsets of the diagonal neighbours; the others (same band in the rows above and
below, other bands in the same row) are reached through the vertical and row runs."""


def _neighbour_table(height: int, bands: int, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``[len(offsets), P]`` index of the neighbour at each offset of every node
    ``p = row * bands + band``; ``P`` (a padding slot, one past the last node) outside the grid."""
    p = height * bands
    rows, cols = np.divmod(np.arange(p), bands)
    table = np.full((len(offsets), p), p, dtype=np.int32)
    for k, (dr, dc) in enumerate(offsets):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < bands)
        table[k, inside] = (r * bands + c)[inside]
    return table


def add_box_nodes(b: _Builder, cams: str, *, height: int, layout: BandLayout, topk: int,
                  threshold: float) -> tuple[str, str]:
    """Append the box rule for ``cams [N, topk, height, layout.width]`` to ``b``; returns the
    names of ``boxes [N, topk, 4]`` (float, x0, y0, x1, y1) and ``boxes_exact [N, topk]`` (bool)."""
    width, nb = layout.width, layout.count
    p = height * nb
    big = float(height * width + 1)
    i64 = np.int64

    maps = b("Reshape", cams, b.const([-1, height, width], "shape", i64))  # [M, H, W]
    peak = b("ReduceMax", maps, b.const([1, 2], "axes", i64), keepdims=1)  # [M, 1, 1]
    thr = b("Mul", peak, b.const(np.float32(threshold), "tau"))
    mask = b("Cast", b("GreaterOrEqual", maps, thr), to=TensorProto.FLOAT)
    finite = b("Equal", b("Sub", peak, peak), b.const(0.0))  # False for NaN and +-inf
    finite = b("Reshape", finite, b.const([1, -1], "shape", i64))  # [1, M]

    # Per node: pixel count n and sum s1 of column offsets from the band's start (below 90 x 90 / 2
    # for bands up to 90 columns: exact even under TF32 matmuls). Upsampling makes each run a
    # prefix or a suffix of its band; n distinct offsets reach the smallest possible sum only as
    # 0..n-1 and the largest only as the last n, so s1 tells both the run and whether it is one.
    moments = np.zeros((width, 2 * nb), dtype=np.float32)
    start_c = np.zeros(nb, dtype=np.float32)
    width_c = np.zeros(nb, dtype=np.float32)
    for band, (start, stop) in enumerate(zip(layout.start, layout.stop, strict=True)):
        start_c[band], width_c[band] = start, stop - start
        moments[start:stop, band] = 1.0
        moments[start:stop, nb + band] = np.arange(stop - start)
    rows2d = b("Reshape", mask, b.const([-1, width], "shape", i64))  # [M*H, W]
    stats = b("MatMul", rows2d, b.const(moments, "moments"))  # [M*H, 2*nb]
    # Node-major layout [P, M] from here on: Gather along axis 0 then moves whole rows of M
    # values, which is what makes the neighbour fetches cheap.
    stats = b("Transpose", b("Reshape", stats, b.const([-1, height, 2, nb], "shape", i64)), perm=[2, 1, 3, 0])
    n, s1 = (b("Reshape", half, b.const([p, -1], "shape", i64))
             for half in b.op("Split", stats, axis=0, num_outputs=2, outputs=2))  # [P, M] each
    one = b.const(1.0)
    band_width = b.const(np.tile(width_c, height)[:, None], "band_width")  # [P, 1]
    first_n = b("Div", b("Mul", n, b("Sub", n, one)), b.const(2.0))  # 0 + 1 + ... + (n - 1)
    is_prefix = b("Equal", s1, first_n)
    is_suffix = b("Equal", s1, b("Sub", b("Mul", n, b("Sub", band_width, one)), first_n))
    one_run = b("Or", is_prefix, is_suffix)  # (an empty node is a prefix)
    exact = b("Cast", b("ReduceMin", b("Cast", one_run, to=TensorProto.FLOAT),
                        b.const([0], "axes", i64), keepdims=0), to=TensorProto.BOOL)  # [M]
    lo = b("Add", b.const(np.tile(start_c, height)[:, None], "band_start"),
           b("Where", is_prefix, b.const(0.0), b("Sub", band_width, n)))
    hi = b("Sub", b("Add", lo, n), one)
    valid_b = b("Greater", n, b.const(0.0))

    # Edges: two nodes are linked when both are non-empty and their runs touch or overlap. An
    # empty node (and the padding slot P outside the grid) gets the run [big, -big], which
    # touches nothing: the two comparisons below then also test that both nodes are non-empty.
    zero_row = b("Mul", b("Slice", n, b.const([0], "s", i64), b.const([1], "e", i64),
                          b.const([0], "ax", i64)), b.const(0.0))  # [1, M]
    lo_or_none = b("Concat", b("Where", valid_b, lo, b.const(big)), b("Add", zero_row, b.const(big)), axis=0)
    hi_or_none = b("Concat", b("Where", valid_b, hi, b.const(-big)), b("Sub", zero_row, b.const(big)), axis=0)
    hi1 = b("Add", b("Slice", hi_or_none, b.const([0], "s", i64), b.const([p], "e", i64), b.const([0], "ax", i64)),
            one)
    lo_own = b("Slice", lo_or_none, b.const([0], "s", i64), b.const([p], "e", i64), b.const([0], "ax", i64))

    def linked(offsets: tuple[tuple[int, int], ...]) -> tuple[str, str]:
        """Returns the ``[S, P]`` neighbour table for ``offsets`` and the ``[S, P, M]`` links."""
        table = b.const(_neighbour_table(height, nb, offsets), "neighbours")
        lo_n = b("Gather", lo_or_none, table, axis=0)
        hi_n1 = b("Add", b("Gather", hi_or_none, table, axis=0), one)
        return table, b("And", b("LessOrEqual", lo_n, hi1), b("LessOrEqual", lo_own, hi_n1))

    side_table, side_links = linked(DIAGONAL_OFFSETS)
    _, below = linked(((1, 0),))
    _, above = linked(((-1, 0),))
    _, right = linked(((0, 1),))
    _, left = linked(((0, -1),))

    # Runs: nodes linked row after row within one band (vertical runs), or band after band within
    # one row (row runs). Their first and last node, by pointer doubling along the links, once;
    # then what a range maximum over the run needs: a sparse table keeps at level s the maximum
    # over 2^s consecutive nodes of the run, and two lookups at level floor(log2(length)) cover it.
    i32 = np.int32
    index = b.const(np.arange(p, dtype=i32)[:, None], "index")  # [P, 1]

    def run(forward: str, backward: str, unit: int, count: int) -> tuple[str, str, str, int]:
        """(first node, lookup A, lookup B, levels) for runs of up to ``count`` nodes ``unit`` apart."""
        levels = max(1, int(np.ceil(np.log2(count)))) if count > 1 else 1

        def end(link: str, step: int) -> str:
            at = b("Where", b("Squeeze", link, b.const([0], "ax", i64)), b("Add", index, b.const(step, "step", i32)),
                   index)
            for _ in range(levels):
                at = b("GatherElements", at, at, axis=0)
            return at

        last, first = end(forward, unit), end(backward, -unit)
        length = b("Add", b("Div", b("Sub", last, first), b.const(unit, "unit", i32)), b.const(1, "one", i32))
        if levels > 1:
            powers = b.const((2 ** np.arange(1, levels, dtype=np.int32))[:, None, None], "powers")
            level = b("ReduceSum", b("Cast", b("GreaterOrEqual", b("Unsqueeze", length, b.const([0], "ax", i64)),
                                               powers), to=TensorProto.INT32),
                      b.const([0], "axes", i64), keepdims=0)  # floor(log2(length))
        else:
            level = b("Mul", length, b.const(0, "zero", i32))
        span = b("Gather", b.const((2 ** np.arange(levels, dtype=np.int32) - 1) * unit, "span"), level, axis=0)
        base = b("Mul", level, b.const(p, "p", i32))
        return last, b("Add", base, first), b("Add", base, b("Sub", last, span)), levels

    tail, first_at, last_at, vertical_levels = run(below, above, nb, height)
    _, row_first_at, row_last_at, row_levels = run(right, left, 1, nb)
    side_mask = b("Cast", side_links, to=TensorProto.INT32)  # [S, P, M]

    def range_max(g: _Builder, x: str, unit: int, levels: int, first: str, last: str) -> str:
        """In-loop: the maximum of ``x`` over each node's run, from a sparse table."""
        table, current = [x], x
        for k in range(levels - 1):
            shift = (2**k) * unit
            if shift < p:
                current = g("Max", current, g("Pad", g("Slice", current, g.const([shift], "s", i64),
                                                       g.const([p], "e", i64), g.const([0], "ax", i64)),
                                              g.const([0, 0, shift, 0], "pads", i64), mode="constant"))
            table.append(current)
        stacked = g("Concat", *table, axis=0) if levels > 1 else x  # [levels * P, M]
        return g("Max", g("GatherElements", stacked, first, axis=0), g("GatherElements", stacked, last, axis=0))

    # Labels: vertical run's last node + 1 (0 for empty nodes). Each round: take the largest label
    # over the diagonal neighbours, then over the row run, then over the vertical run, then jump
    # (label = label of node label - 1); until nothing is offered a larger label.
    zero_row_i = b("Cast", zero_row, to=TensorProto.INT32)
    labels0 = b("Where", valid_b, b("Add", tail, b.const(1, "one", i32)), b.const(0, "zero", i32))
    body = _Builder(b.prefix + "loop_")
    body_in = body.name("labels_in")
    nothing = body.const(0, "zero", i32)
    fetched = body("Mul", side_mask, body("Gather", body("Concat", body_in, zero_row_i, axis=0), side_table, axis=0))
    slots = body.op("Split", fetched, axis=0, num_outputs=len(DIAGONAL_OFFSETS), outputs=len(DIAGONAL_OFFSETS))
    grown = body("Max", body_in, body("Squeeze", body("Max", *slots), body.const([0], "ax", i64)))
    grown = range_max(body, grown, 1, row_levels, row_first_at, row_last_at)
    # Vertical runs hold one label at the start of every round. So if no diagonal neighbour offers
    # a larger label and every row run already holds one label, every link joins equal labels:
    # done, and the rest of the round is skipped.
    changed = body("Greater", body("ReduceMax", body("Sub", grown, body_in), keepdims=0), nothing)
    merge = _Builder(b.prefix + "merge_")
    over_run = range_max(merge, grown, nb, vertical_levels, first_at, last_at)
    pointer = merge("Where", merge("Greater", over_run, merge.const(0, "zero", i32)),
                    merge("Sub", over_run, merge.const(1, "one", i32)), merge.const(p, "p", i32))
    merged = merge("GatherElements", merge("Concat", over_run, zero_row_i, axis=0), pointer, axis=0)
    keep = body.name("keep")
    jumped = body("If", changed,
                  then_branch=helper.make_graph(merge.nodes, b.name("merge"), [],
                                                [helper.make_tensor_value_info(merged, TensorProto.INT32, None)],
                                                initializer=merge.initializers),
                  else_branch=helper.make_graph([helper.make_node("Identity", [body_in], [keep])], b.name("keep"), [],
                                                [helper.make_tensor_value_info(keep, TensorProto.INT32, None)]))
    body_out = body("Identity", jumped, hint="labels_out")
    cond_out = body("Identity", changed, hint="cond_out")
    loop_graph = helper.make_graph(
        body.nodes, b.name("propagate"),
        [helper.make_tensor_value_info(body.name("iteration"), TensorProto.INT64, []),
         helper.make_tensor_value_info(body.name("cond_in"), TensorProto.BOOL, []),
         helper.make_tensor_value_info(body_in, TensorProto.INT32, None)],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(body_out, TensorProto.INT32, None)],
        initializer=body.initializers,
    )
    labels = b("Loop", b.const(p + 1, "max_rounds", i64), b.const(True, "true", np.bool_), labels0,
               body=loop_graph)

    # Sort nodes by label, then by node index, both descending (empty nodes, label 0, go last):
    # each component is then one stretch whose last node has its smallest index, which is where
    # its first pixel in raster order lies (nodes are numbered row by row, left to right).
    # Areas: prefix sums C of the pixel counts; a stretch ending at e has C[e] minus C at the
    # previous stretch's end, found as a running maximum (C never decreases).
    key = b("Add", b("Mul", labels, b.const(p + 1, "p1", i32)), index)  # < (P + 1)^2, exact in int32
    _, order = b.op("TopK", b("Transpose", key, perm=[1, 0]), b.const([p], "k", i64), axis=1,
                    largest=1, sorted=1, outputs=2)  # (ONNX Runtime sorts the last axis faster)
    order = b("Transpose", order, perm=[1, 0])
    sorted_labels = b("GatherElements", labels, order, axis=0)
    rows_p = b.const(np.repeat(np.arange(height, dtype=np.float32), nb)[:, None], "rows")  # [P, 1]
    first_pixel = b("Add", b("Mul", rows_p, b.const(float(width))), lo)
    first = b("GatherElements", first_pixel, order, axis=0)
    minus_one = b.const(-1, "minus_one", i32)

    def rows(x: str, start: int, stop: int) -> str:
        return b("Slice", x, b.const([start], "s", i64), b.const([stop], "e", i64), b.const([0], "ax", i64))

    def running(op: str, x: str) -> str:  # inclusive scan along the nodes, by doubling
        shift = 1
        while shift < p:
            x = b(op, x, b("Pad", rows(x, 0, p - shift), b.const([shift, 0, 0, 0], "pads", i64), mode="constant"))
            shift *= 2
        return x

    total = running("Add", b("GatherElements", n, order, axis=0))
    next_label = b("Concat", rows(sorted_labels, 1, p), b("Add", rows(b("Mul", sorted_labels, b.const(0, "zero", i32)),
                                                                     0, 1), minus_one), axis=0)
    is_end = b("And", b("Not", b("Equal", sorted_labels, next_label)),
               b("Greater", sorted_labels, b.const(0, "zero", i32)))
    end_total = running("Max", b("Where", is_end, total, b.const(0.0)))
    before = b("Pad", rows(end_total, 0, p - 1), b.const([1, 0, 0, 0], "pads", i64), mode="constant")
    end_area = b("Where", is_end, b("Sub", total, before), b.const(-1.0))
    best_area = b("ReduceMax", end_area, b.const([0], "axes", i64), keepdims=1)
    candidate = b("And", is_end, b("Equal", end_area, best_area))
    winner_at = b("ArgMin", b("Where", candidate, first, b.const(big + 1)), axis=0, keepdims=1)
    winner = b("GatherElements", sorted_labels, winner_at, axis=0)  # [1, M]
    has_winner = b("Greater", winner, b.const(0, "zero", i32))
    member = b("And", b("Equal", labels, winner), has_winner)  # [P, M]

    def extreme(op: str, values: str, fill: float) -> str:  # -> [1, M]
        return b(op, b("Where", member, values, b.const(fill)), b.const([0], "axes", i64), keepdims=1)

    x0 = extreme("ReduceMin", lo, big)
    y0 = extreme("ReduceMin", rows_p, big)
    x1 = extreme("ReduceMax", b("Add", hi, one), -1.0)
    y1 = extreme("ReduceMax", b("Add", rows_p, one), -1.0)
    found = b("And", has_winner, finite)  # [1, M]
    box = b("Where", found, b("Concat", x0, y0, x1, y1, axis=0),
            b.const(np.array([[0], [0], [width], [height]], dtype=np.float32), "frame"))  # [4, M]
    boxes = b("Reshape", b("Transpose", box, perm=[1, 0]), b.const([-1, topk, 4], "shape", i64), hint="boxes")
    exact = b("Reshape", exact, b.const([-1, topk], "shape", i64), hint="boxes_exact")
    return boxes, exact


def box_model(height: int, layout: BandLayout, topk: int, threshold: float = 0.2,
              opset: int = 18) -> onnx.ModelProto:
    """A standalone graph ``cams [N, topk, H, W] -> boxes, boxes_exact``, for tests and checks."""
    b = _Builder("box_")
    boxes, exact = add_box_nodes(b, "cams", height=height, layout=layout, topk=topk, threshold=threshold)
    b.nodes.append(helper.make_node("Identity", [boxes], ["boxes"]))
    b.nodes.append(helper.make_node("Identity", [exact], ["boxes_exact"]))
    graph = helper.make_graph(
        b.nodes, "camdeploy_boxes",
        [helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["N", topk, height, layout.width])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", topk, 4]),
         helper.make_tensor_value_info("boxes_exact", TensorProto.BOOL, ["N", topk])],
        initializer=b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def add_graph_boxes(model: onnx.ModelProto, *, feature_width: int, topk: int, threshold: float,
                    cams: str = "cams") -> BandLayout:
    """Add ``boxes`` and ``boxes_exact`` outputs computed from the ``cams [N, T, H, W]`` output of
    ``model`` (in place), for maps upsampled from ``feature_width`` columns. Returns the layout."""
    shape = next((o.type.tensor_type.shape for o in model.graph.output if o.name == cams), None)
    if shape is None or len(shape.dim) != 4:
        raise CamdeployError(f"the graph has no 4-D output {cams!r} to compute boxes from")
    height, width = (int(d.dim_value) for d in shape.dim[2:])
    if not height or not width:
        raise CamdeployError(f"output {cams!r}: the map size must be static, got {shape}")
    layout = BandLayout.from_band_of_column(upsample_bands(feature_width, width))
    b = _Builder("boxes_")
    boxes, exact = add_box_nodes(b, cams, height=height, layout=layout, topk=topk, threshold=threshold)
    model.graph.node.extend(b.nodes)
    model.graph.node.extend([helper.make_node("Identity", [boxes], ["boxes"], name="boxes"),
                             helper.make_node("Identity", [exact], ["boxes_exact"], name="boxes_exact")])
    model.graph.initializer.extend(b.initializers)
    model.graph.output.extend([
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [shape.dim[0].dim_param or None, topk, 4]),
        helper.make_tensor_value_info("boxes_exact", TensorProto.BOOL, [shape.dim[0].dim_param or None, topk]),
    ])
    return layout


def has_box_outputs(model: onnx.ModelProto) -> bool:
    """Whether ``model`` computes boxes itself (exported with ``--boxes graph``)."""
    return any(o.name == "boxes" for o in model.graph.output)


def node_count(height: int, layout: BandLayout) -> int:
    """Nodes per map: the K of the graph's TopK, which TensorRT limits to :data:`TENSORRT_TOPK_LIMIT`."""
    return height * layout.count


def strip_graph_boxes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without the ``boxes`` and ``boxes_exact`` outputs and the nodes that
    only they need (for runtimes where the host rule is faster)."""
    from onnx.utils import Extractor

    keep = [o.name for o in model.graph.output if o.name not in BOXES_OUTPUTS]
    inputs = [i.name for i in model.graph.input]
    stripped = Extractor(model).extract_model(inputs, keep)
    stripped.metadata_props.extend(model.metadata_props)
    stripped.producer_name, stripped.producer_version = model.producer_name, model.producer_version
    return stripped
