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
from camdeploy.graph import BOX_OUTPUTS

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


@dataclass(frozen=True)
class _Grid:
    """The node grid of one map: ``height`` rows x ``bands`` bands, ``nodes`` in all."""

    height: int
    layout: BandLayout

    @property
    def width(self) -> int:
        return self.layout.width

    @property
    def bands(self) -> int:
        return self.layout.count

    @property
    def nodes(self) -> int:
        return self.height * self.bands

    @property
    def far(self) -> float:
        """A column or pixel index beyond any real one."""
        return float(self.height * self.width + 1)


@dataclass(frozen=True)
class _Segments:
    """Step 1's result, node-major ``[P, M]`` (``M`` maps): each node's run of mask pixels."""

    counts: str
    """Pixels in the run."""
    first_col: str
    """First column of the run."""
    last_col: str
    """Last column of the run."""
    non_empty: str
    exact: str
    """``[M]`` bool: every run of the map is a band prefix or suffix (else box it on the host)."""
    finite: str
    """``[1, M]`` bool: the map's maximum is finite."""
    zero_row: str
    """``[1, M]`` zeros, for padding rows."""


@dataclass(frozen=True)
class _Links:
    """Step 2's result: which neighbouring runs touch or overlap."""

    diagonal_table: str
    """``[4, P]`` index of the diagonal neighbours (P: outside the grid)."""
    diagonal: str
    """``[4, P, M]`` bool: linked to that diagonal neighbour."""
    below: str
    above: str
    right: str
    left: str
    """``[1, P, M]`` bool each: linked to the node below, above, right, left."""


def _row_segments(g: _Builder, cams: str, grid: _Grid, threshold: float) -> _Segments:
    """Step 1: threshold the maps, and describe the mask in each (row, band) node by one run."""
    i64 = np.int64
    width, bands, nodes = grid.width, grid.bands, grid.nodes
    maps = g("Reshape", cams, g.const([-1, grid.height, width], "shape", i64))  # [M, H, W]
    peak = g("ReduceMax", maps, g.const([1, 2], "axes", i64), keepdims=1)  # [M, 1, 1]
    level = g("Mul", peak, g.const(np.float32(threshold), "tau"))
    mask = g("Cast", g("GreaterOrEqual", maps, level), to=TensorProto.FLOAT)
    finite = g("Equal", g("Sub", peak, peak), g.const(0.0))  # False for NaN and +-inf
    finite = g("Reshape", finite, g.const([1, -1], "shape", i64))  # [1, M]

    # Per node: pixel count and sum of column offsets from the band's start (below 90 x 90 / 2
    # for bands up to 90 columns: exact even under TF32 matmuls). Upsampling makes each run a
    # prefix or a suffix of its band; n distinct offsets reach the smallest possible sum only as
    # 0..n-1 and the largest only as the last n, so the sum tells both the run and whether it is one.
    moments = np.zeros((width, 2 * bands), dtype=np.float32)
    band_start = np.zeros(bands, dtype=np.float32)
    band_width = np.zeros(bands, dtype=np.float32)
    for band, (start, stop) in enumerate(zip(grid.layout.start, grid.layout.stop, strict=True)):
        band_start[band], band_width[band] = start, stop - start
        moments[start:stop, band] = 1.0
        moments[start:stop, bands + band] = np.arange(stop - start)
    rows = g("Reshape", mask, g.const([-1, width], "shape", i64))  # [M*H, W]
    stats = g("MatMul", rows, g.const(moments, "moments"))  # [M*H, 2*bands]
    # Node-major layout [P, M] from here on: Gather along axis 0 then moves whole rows of M
    # values, which is what makes the neighbour fetches cheap.
    stats = g("Transpose", g("Reshape", stats, g.const([-1, grid.height, 2, bands], "shape", i64)), perm=[2, 1, 3, 0])
    counts, offset_sums = (g("Reshape", half, g.const([nodes, -1], "shape", i64))
                           for half in g.op("Split", stats, axis=0, num_outputs=2, outputs=2))  # [P, M] each
    one = g.const(1.0)
    widths = g.const(np.tile(band_width, grid.height)[:, None], "band_width")  # [P, 1]
    prefix_sum = g("Div", g("Mul", counts, g("Sub", counts, one)), g.const(2.0))  # 0 + 1 + ... + (n - 1)
    is_prefix = g("Equal", offset_sums, prefix_sum)
    is_suffix = g("Equal", offset_sums, g("Sub", g("Mul", counts, g("Sub", widths, one)), prefix_sum))
    one_run = g("Or", is_prefix, is_suffix)  # (an empty node is a prefix)
    exact = g("Cast", g("ReduceMin", g("Cast", one_run, to=TensorProto.FLOAT),
                        g.const([0], "axes", i64), keepdims=0), to=TensorProto.BOOL)  # [M]
    first_col = g("Add", g.const(np.tile(band_start, grid.height)[:, None], "band_start"),
                  g("Where", is_prefix, g.const(0.0), g("Sub", widths, counts)))
    last_col = g("Sub", g("Add", first_col, counts), one)
    non_empty = g("Greater", counts, g.const(0.0))
    zero_row = g("Mul", g("Slice", counts, g.const([0], "s", i64), g.const([1], "e", i64),
                          g.const([0], "ax", i64)), g.const(0.0))  # [1, M]
    return _Segments(counts, first_col, last_col, non_empty, exact, finite, zero_row)


def _links(g: _Builder, seg: _Segments, grid: _Grid) -> _Links:
    """Step 2: two nodes are linked when both are non-empty and their runs touch or overlap
    (``first' <= last + 1`` and ``first <= last' + 1``): 8-connectivity of pixels, exactly."""
    i64 = np.int64
    nodes, far, one = grid.nodes, grid.far, g.const(1.0)
    # An empty node (and the padding slot P outside the grid) gets the run [far, -far], which
    # touches nothing: the two comparisons below then also test that both nodes are non-empty.
    first_or_none = g("Concat", g("Where", seg.non_empty, seg.first_col, g.const(far)),
                      g("Add", seg.zero_row, g.const(far)), axis=0)
    last_or_none = g("Concat", g("Where", seg.non_empty, seg.last_col, g.const(-far)),
                     g("Sub", seg.zero_row, g.const(far)), axis=0)
    last_own = g("Add", g("Slice", last_or_none, g.const([0], "s", i64), g.const([nodes], "e", i64),
                          g.const([0], "ax", i64)), one)
    first_own = g("Slice", first_or_none, g.const([0], "s", i64), g.const([nodes], "e", i64), g.const([0], "ax", i64))

    def linked(offsets: tuple[tuple[int, int], ...]) -> tuple[str, str]:
        """The ``[S, P]`` neighbour table for ``offsets`` and the ``[S, P, M]`` links."""
        table = g.const(_neighbour_table(grid.height, grid.bands, offsets), "neighbours")
        first_other = g("Gather", first_or_none, table, axis=0)
        last_other = g("Add", g("Gather", last_or_none, table, axis=0), one)
        return table, g("And", g("LessOrEqual", first_other, last_own), g("LessOrEqual", first_own, last_other))

    diagonal_table, diagonal = linked(DIAGONAL_OFFSETS)
    _, below = linked(((1, 0),))
    _, above = linked(((-1, 0),))
    _, right = linked(((0, 1),))
    _, left = linked(((0, -1),))
    return _Links(diagonal_table, diagonal, below, above, right, left)


@dataclass(frozen=True)
class _Run:
    """The runs of linked nodes along one direction, ready for range maxima (a sparse table keeps
    at level s the maximum over 2^s consecutive nodes; two lookups at level floor(log2(length))
    cover a run)."""

    last: str
    first_lookup: str
    last_lookup: str
    levels: int


def _run(g: _Builder, forward: str, backward: str, unit: int, count: int, grid: _Grid, index: str) -> _Run:
    """Runs of up to ``count`` nodes ``unit`` apart, linked by ``forward`` / ``backward``: their
    first and last node by pointer doubling, once. ``index`` is the ``[P, 1]`` node index."""
    i64, i32 = np.int64, np.int32
    nodes = grid.nodes
    levels = max(1, int(np.ceil(np.log2(count)))) if count > 1 else 1

    def end(link: str, step: int) -> str:
        at = g("Where", g("Squeeze", link, g.const([0], "ax", i64)), g("Add", index, g.const(step, "step", i32)), index)
        for _ in range(levels):
            at = g("GatherElements", at, at, axis=0)
        return at

    last, first = end(forward, unit), end(backward, -unit)
    length = g("Add", g("Div", g("Sub", last, first), g.const(unit, "unit", i32)), g.const(1, "one", i32))
    if levels > 1:
        powers = g.const((2 ** np.arange(1, levels, dtype=np.int32))[:, None, None], "powers")
        level = g("ReduceSum", g("Cast", g("GreaterOrEqual", g("Unsqueeze", length, g.const([0], "ax", i64)),
                                           powers), to=TensorProto.INT32),
                  g.const([0], "axes", i64), keepdims=0)  # floor(log2(length))
    else:
        level = g("Mul", length, g.const(0, "zero", i32))
    span = g("Gather", g.const((2 ** np.arange(levels, dtype=np.int32) - 1) * unit, "span"), level, axis=0)
    base = g("Mul", level, g.const(nodes, "p", i32))
    return _Run(last, g("Add", base, first), g("Add", base, g("Sub", last, span)), levels)


def _range_max(g: _Builder, x: str, unit: int, run: _Run, nodes: int) -> str:
    """The maximum of ``x`` over each node's run, from a sparse table (built inside a loop body)."""
    i64 = np.int64
    table, current = [x], x
    for k in range(run.levels - 1):
        shift = (2**k) * unit
        if shift < nodes:
            current = g("Max", current, g("Pad", g("Slice", current, g.const([shift], "s", i64),
                                                   g.const([nodes], "e", i64), g.const([0], "ax", i64)),
                                          g.const([0, 0, shift, 0], "pads", i64), mode="constant"))
        table.append(current)
    stacked = g("Concat", *table, axis=0) if run.levels > 1 else x  # [levels * P, M]
    return g("Max", g("GatherElements", stacked, run.first_lookup, axis=0),
             g("GatherElements", stacked, run.last_lookup, axis=0))


def _labels(g: _Builder, seg: _Segments, links: _Links, grid: _Grid, index: str) -> str:
    """Step 3: component labels ``[P, M]`` int32 (0 for empty nodes).

    Labels start as the vertical run's last node + 1. Each round of a ``Loop``: every node takes
    the largest label among its diagonal neighbours, then in its row run, then in its vertical run,
    then labels jump (``label = label[label - 1]``), until nothing is offered a larger label.
    """
    i64, i32 = np.int64, np.int32
    nodes = grid.nodes
    vertical = _run(g, links.below, links.above, grid.bands, grid.height, grid, index)
    row = _run(g, links.right, links.left, 1, grid.bands, grid, index)
    diagonal_mask = g("Cast", links.diagonal, to=TensorProto.INT32)  # [S, P, M]

    zero_row = g("Cast", seg.zero_row, to=TensorProto.INT32)
    labels0 = g("Where", seg.non_empty, g("Add", vertical.last, g.const(1, "one", i32)), g.const(0, "zero", i32))
    body = _Builder(g.prefix + "loop_")
    labels_in = body.name("labels_in")
    nothing = body.const(0, "zero", i32)
    fetched = body("Mul", diagonal_mask, body("Gather", body("Concat", labels_in, zero_row, axis=0),
                                              links.diagonal_table, axis=0))
    slots = body.op("Split", fetched, axis=0, num_outputs=len(DIAGONAL_OFFSETS), outputs=len(DIAGONAL_OFFSETS))
    grown = body("Max", labels_in, body("Squeeze", body("Max", *slots), body.const([0], "ax", i64)))
    grown = _range_max(body, grown, 1, row, nodes)
    # Vertical runs hold one label at the start of every round. So if no diagonal neighbour offers
    # a larger label and every row run already holds one label, every link joins equal labels:
    # done, and the rest of the round is skipped.
    changed = body("Greater", body("ReduceMax", body("Sub", grown, labels_in), keepdims=0), nothing)
    merge = _Builder(g.prefix + "merge_")
    over_run = _range_max(merge, grown, grid.bands, vertical, nodes)
    pointer = merge("Where", merge("Greater", over_run, merge.const(0, "zero", i32)),
                    merge("Sub", over_run, merge.const(1, "one", i32)), merge.const(nodes, "p", i32))
    merged = merge("GatherElements", merge("Concat", over_run, zero_row, axis=0), pointer, axis=0)
    keep = body.name("keep")
    jumped = body("If", changed,
                  then_branch=helper.make_graph(merge.nodes, g.name("merge"), [],
                                                [helper.make_tensor_value_info(merged, TensorProto.INT32, None)],
                                                initializer=merge.initializers),
                  else_branch=helper.make_graph([helper.make_node("Identity", [labels_in], [keep])], g.name("keep"),
                                                [], [helper.make_tensor_value_info(keep, TensorProto.INT32, None)]))
    labels_out = body("Identity", jumped, hint="labels_out")
    cond_out = body("Identity", changed, hint="cond_out")
    loop_graph = helper.make_graph(
        body.nodes, g.name("propagate"),
        [helper.make_tensor_value_info(body.name("iteration"), TensorProto.INT64, []),
         helper.make_tensor_value_info(body.name("cond_in"), TensorProto.BOOL, []),
         helper.make_tensor_value_info(labels_in, TensorProto.INT32, None)],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(labels_out, TensorProto.INT32, None)],
        initializer=body.initializers,
    )
    return g("Loop", g.const(nodes + 1, "max_rounds", i64), g.const(True, "true", np.bool_), labels0,
             body=loop_graph)


@dataclass(frozen=True)
class _Stretches:
    """Step 4's result: nodes sorted by label, and each component's area at its stretch's end."""

    order: str
    sorted_labels: str
    is_end: str
    areas: str
    """``[P, M]``: the component's pixel count at the end of its stretch, -1 elsewhere."""


def _component_areas(g: _Builder, seg: _Segments, labels: str, grid: _Grid, index: str) -> _Stretches:
    """Step 4: areas without scatter reductions (which TensorRT lacks).

    Sort nodes by label, then by node index, both descending (empty nodes, label 0, go last):
    each component is then one stretch whose last node has its smallest index, which is where its
    first pixel in raster order lies (nodes are numbered row by row, left to right). Areas: prefix
    sums C of the pixel counts; a stretch ending at e has C[e] minus C at the previous stretch's
    end, found as a running maximum (C never decreases).
    """
    i64, i32 = np.int64, np.int32
    nodes = grid.nodes
    key = g("Add", g("Mul", labels, g.const(nodes + 1, "p1", i32)), index)  # < (P + 1)^2, exact in int32
    _, order = g.op("TopK", g("Transpose", key, perm=[1, 0]), g.const([nodes], "k", i64), axis=1,
                    largest=1, sorted=1, outputs=2)  # (ONNX Runtime sorts the last axis faster)
    order = g("Transpose", order, perm=[1, 0])
    sorted_labels = g("GatherElements", labels, order, axis=0)
    minus_one = g.const(-1, "minus_one", i32)

    def rows(x: str, start: int, stop: int) -> str:
        return g("Slice", x, g.const([start], "s", i64), g.const([stop], "e", i64), g.const([0], "ax", i64))

    def running(op: str, x: str) -> str:  # inclusive scan along the nodes, by doubling
        shift = 1
        while shift < nodes:
            x = g(op, x, g("Pad", rows(x, 0, nodes - shift), g.const([shift, 0, 0, 0], "pads", i64), mode="constant"))
            shift *= 2
        return x

    total = running("Add", g("GatherElements", seg.counts, order, axis=0))
    next_label = g("Concat", rows(sorted_labels, 1, nodes),
                   g("Add", rows(g("Mul", sorted_labels, g.const(0, "zero", i32)), 0, 1), minus_one), axis=0)
    is_end = g("And", g("Not", g("Equal", sorted_labels, next_label)),
               g("Greater", sorted_labels, g.const(0, "zero", i32)))
    end_total = running("Max", g("Where", is_end, total, g.const(0.0)))
    before = g("Pad", rows(end_total, 0, nodes - 1), g.const([1, 0, 0, 0], "pads", i64), mode="constant")
    areas = g("Where", is_end, g("Sub", total, before), g.const(-1.0))
    return _Stretches(order, sorted_labels, is_end, areas)


def _winner_box(g: _Builder, seg: _Segments, labels: str, stretches: _Stretches, grid: _Grid,
                topk: int) -> tuple[str, str]:
    """Step 5: the largest component, then the smallest first pixel; its box in pixel-edge
    coordinates of the map (the whole frame for a map with no finite maximum)."""
    i64, i32 = np.int64, np.int32
    far, one = grid.far, g.const(1.0)
    rows_p = g.const(np.repeat(np.arange(grid.height, dtype=np.float32), grid.bands)[:, None], "rows")  # [P, 1]
    first_pixel = g("Add", g("Mul", rows_p, g.const(float(grid.width))), seg.first_col)
    first = g("GatherElements", first_pixel, stretches.order, axis=0)
    best_area = g("ReduceMax", stretches.areas, g.const([0], "axes", i64), keepdims=1)
    candidate = g("And", stretches.is_end, g("Equal", stretches.areas, best_area))
    winner_at = g("ArgMin", g("Where", candidate, first, g.const(far + 1)), axis=0, keepdims=1)
    winner = g("GatherElements", stretches.sorted_labels, winner_at, axis=0)  # [1, M]
    has_winner = g("Greater", winner, g.const(0, "zero", i32))
    member = g("And", g("Equal", labels, winner), has_winner)  # [P, M]

    def extreme(op: str, values: str, fill: float) -> str:  # -> [1, M]
        return g(op, g("Where", member, values, g.const(fill)), g.const([0], "axes", i64), keepdims=1)

    x0 = extreme("ReduceMin", seg.first_col, far)
    y0 = extreme("ReduceMin", rows_p, far)
    x1 = extreme("ReduceMax", g("Add", seg.last_col, one), -1.0)
    y1 = extreme("ReduceMax", g("Add", rows_p, one), -1.0)
    found = g("And", has_winner, seg.finite)  # [1, M]
    box = g("Where", found, g("Concat", x0, y0, x1, y1, axis=0),
            g.const(np.array([[0], [0], [grid.width], [grid.height]], dtype=np.float32), "frame"))  # [4, M]
    boxes = g("Reshape", g("Transpose", box, perm=[1, 0]), g.const([-1, topk, 4], "shape", i64), hint="boxes")
    exact = g("Reshape", seg.exact, g.const([-1, topk], "shape", i64), hint="boxes_exact")
    return boxes, exact


def add_box_nodes(g: _Builder, cams: str, *, height: int, layout: BandLayout, topk: int,
                  threshold: float) -> tuple[str, str]:
    """Append the box rule for ``cams [N, topk, height, layout.width]`` to ``g``; returns the
    names of ``boxes [N, topk, 4]`` (float, x0, y0, x1, y1) and ``boxes_exact [N, topk]`` (bool).
    The five steps are those of the module's docstring."""
    grid = _Grid(height, layout)
    index = g.const(np.arange(grid.nodes, dtype=np.int32)[:, None], "index")  # [P, 1]
    segments = _row_segments(g, cams, grid, threshold)
    links = _links(g, segments, grid)
    labels = _labels(g, segments, links, grid, index)
    stretches = _component_areas(g, segments, labels, grid, index)
    return _winner_box(g, segments, labels, stretches, grid, topk)


def box_model(height: int, layout: BandLayout, topk: int, threshold: float = 0.2,
              opset: int = 18) -> onnx.ModelProto:
    """A standalone graph ``cams [N, topk, H, W] -> boxes, boxes_exact``, for tests and checks."""
    g = _Builder("box_")
    boxes, exact = add_box_nodes(g, "cams", height=height, layout=layout, topk=topk, threshold=threshold)
    g.nodes.append(helper.make_node("Identity", [boxes], [BOX_OUTPUTS[0]]))
    g.nodes.append(helper.make_node("Identity", [exact], [BOX_OUTPUTS[1]]))
    graph = helper.make_graph(
        g.nodes, "camdeploy_boxes",
        [helper.make_tensor_value_info("cams", TensorProto.FLOAT, ["N", topk, height, layout.width])],
        [helper.make_tensor_value_info(BOX_OUTPUTS[0], TensorProto.FLOAT, ["N", topk, 4]),
         helper.make_tensor_value_info(BOX_OUTPUTS[1], TensorProto.BOOL, ["N", topk])],
        initializer=g.initializers,
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
    g = _Builder("boxes_")
    boxes, exact = add_box_nodes(g, cams, height=height, layout=layout, topk=topk, threshold=threshold)
    model.graph.node.extend(g.nodes)
    model.graph.node.extend([helper.make_node("Identity", [boxes], [BOX_OUTPUTS[0]], name=BOX_OUTPUTS[0]),
                             helper.make_node("Identity", [exact], [BOX_OUTPUTS[1]], name=BOX_OUTPUTS[1])])
    model.graph.initializer.extend(g.initializers)
    batch = shape.dim[0].dim_param or None
    model.graph.output.extend([
        helper.make_tensor_value_info(BOX_OUTPUTS[0], TensorProto.FLOAT, [batch, topk, 4]),
        helper.make_tensor_value_info(BOX_OUTPUTS[1], TensorProto.BOOL, [batch, topk]),
    ])
    return layout


def node_count(height: int, layout: BandLayout) -> int:
    """Nodes per map: the K of the graph's TopK, which TensorRT limits to :data:`TENSORRT_TOPK_LIMIT`."""
    return height * layout.count
