"""What the units see: stream a data set through one or more runners, keep each unit's top images
and exact threshold, then tally its masks against the concepts (when there are any).

Two passes, as NetDissect does, because the tally needs thresholds computed over the whole data
set:

1. features: images are read, prepared and batched once (:func:`camdeploy.runtime.batches.image_batches`)
   and every runner computes the graph's ``features`` output (``Runner.infer(features=True,
   outputs="classes")``: on ONNX Runtime the graph is cut before the CAM head, no torch). Each
   runner's :class:`~camdeploy.units.stats.UnitStats` keeps top images and the quantile's values,
   and its maps go to a spill file under the output folder (``4 * units * h * w`` bytes per image:
   175 MB for Lite0 on 699 images), removed at the end;
2. tally: each image's concepts are read once and every runner's maps are tallied against them
   (:class:`~camdeploy.units.tally.Tally`), by worker threads over ranges of images whose counts are
   summed (integers: the same counts in any split).

Memory does not grow with the number of images, except for the quantile's buffer (see
:mod:`camdeploy.units.stats`) and the list of images kept.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.images import Frame
from camdeploy.runtime.onnxruntime_runner import usable_cpus
from camdeploy.runtime.runner import Runner
from camdeploy.units.concepts import ConceptSource
from camdeploy.units.stats import DEFAULT_QUANTILE, DEFAULT_TOP_K, UnitStats
from camdeploy.units.tally import DEFAULT_IOU_THRESHOLD, Tally, TallyResult

SATURATED = ("empty", "include")


@dataclass(frozen=True)
class UnitsOptions:
    """Options of :func:`analyse_units`."""

    top_k: int = DEFAULT_TOP_K
    quantile: float = DEFAULT_QUANTILE
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    min_images: int = 1
    """Images a label must occur in to be a unit's label (1: any, as NetDissect-Lite)."""
    saturated: str = "empty"
    """Masks of a unit whose threshold equals its largest value (its top ``q`` lies at one value,
    such as ReLU6's ceiling, so that no value is ``> T``): ``empty`` (the reference's ``> T``) or
    ``include`` (``>= T`` for those units only)."""
    batch_size: int = 16
    resize: str | None = None
    """``stretch`` or ``crop`` (default: what the concepts need, else the model's own)."""
    max_pixels: int | None = None
    prefetch: int = 2
    workers: int | None = None
    """Threads that tally (default: the CPUs this process may use)."""
    progress: bool = True


@dataclass
class ModelUnits:
    """One model's units.

    Attributes:
        name: how reports name the model (its file name).
        thresholds: ``float32 [U]``, the quantile T.
        mask_thresholds: ``float32 [U]``: a mask is ``map > mask_thresholds``: T, or the float32
            just below T for a saturated unit under ``saturated="include"`` (``>= T``).
        saturated: ``bool [U]``: T equals the unit's largest value, and the unit is not constant.
        top_values, top_images: ``[U, k]`` spatial maxima and indices into ``images`` of each
            unit's top images, best first.
        top_maps: ``float32 [U, k, h, w]``, the maps of those images.
        tally: the concepts' tally, or None without concepts.
        class_weight: ``W float32 [K, U]`` of the linear head.
    """

    name: str
    description: dict[str, object]
    thresholds: np.ndarray
    mask_thresholds: np.ndarray
    saturated: np.ndarray
    top_values: np.ndarray
    top_images: np.ndarray
    top_maps: np.ndarray
    class_weight: np.ndarray
    tally: TallyResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def units(self) -> int:
        return len(self.thresholds)


@dataclass
class Analysis:
    """The result of :func:`analyse_units`: one :class:`ModelUnits` per runner, on the same images."""

    models: list[ModelUnits]
    source: ConceptSource
    images: list[int]
    """Indices into ``source.images`` of the images read, in order (``top_images`` index this list)."""
    frames: list[Frame]
    skipped: list[tuple[Path, str]]
    map_shape: tuple[int, int]
    options: UnitsOptions
    seconds: dict[str, float] = field(default_factory=dict)

    def image_path(self, position: int) -> Path:
        """The file of the ``position``-th image read."""
        return self.source.images[self.images[position]]


class _Spill:
    """A model's maps, image after image, in a raw float32 file; read back as a memory map."""

    def __init__(self, path: Path, map_size: int):
        self.path, self.map_size, self.images = path, map_size, 0
        self._handle = open(path, "wb")  # noqa: SIM115 (closed by finish)

    def write(self, features: np.ndarray) -> None:
        self._handle.write(np.ascontiguousarray(features, dtype=np.float32).tobytes())
        self.images += features.shape[0]

    def finish(self) -> np.ndarray:
        self._handle.close()
        if self.images == 0:
            return np.zeros((0, self.map_size), dtype=np.float32)
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.images, self.map_size))


def _progress(total: int, label: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=label, disable=not enabled or None, file=sys.stderr)


def _tally_share(source: ConceptSource, items: list[tuple[int, Frame]], positions: range, maps: list[np.ndarray],
                 thresholds: list[np.ndarray], units: list[int], map_shape: tuple[int, int], done: Callable[[], None]
                 ) -> list[Tally]:
    """One worker's share of the tally: every model's counts over the images at ``positions``."""
    tallies = [Tally(u, source.primary, len(source.categories)) for u in units]
    for position in positions:
        concepts = source.concept_map(*items[position])
        for m, tally in enumerate(tallies):
            tally.add(np.asarray(maps[m][position]).reshape(units[m], *map_shape), thresholds[m], concepts)
        done()
    return tallies


def analyse_units(runners: list[Runner], source: ConceptSource, work_dir: str | Path,
                  options: UnitsOptions = UnitsOptions()) -> Analysis:
    """Run the analysis (see the module docstring) with open ``runners`` on the same images;
    ``work_dir`` receives the temporary spill files (removed before returning)."""
    if not runners:
        raise CamdeployError("analyse_units: no runner given")
    if not source.images:
        raise CamdeployError("no images to analyse")
    if options.batch_size < 1:
        raise CamdeployError(f"--batch-size {options.batch_size}: expected a positive number")
    spec = runners[0].spec
    for runner in runners[1:]:
        if (runner.spec.input_height, runner.spec.input_width) != (spec.input_height, spec.input_width):
            raise CamdeployError(f"--compare {runner.model_path}: input {runner.spec.input_height}x"
                                 f"{runner.spec.input_width}, MODEL has {spec.input_height}x{spec.input_width}; "
                                 "variants must take the same input")
    resize = options.resize or source.resize or spec.resize
    if source.resize and resize != source.resize:
        raise CamdeployError(f"--resize {resize}: {source.kind} concepts label the whole image; use --resize "
                             f"{source.resize}")
    work_dir = Path(work_dir)
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        spill_dir = Path(tempfile.mkdtemp(prefix=".units-spill-", dir=work_dir))
    except OSError as exc:
        raise CamdeployError(f"--out {work_dir}: cannot write there ({exc.strerror or exc})") from exc
    try:
        return _analyse(runners, source, spill_dir, options, resize)
    except OSError as exc:
        raise CamdeployError(f"--out {work_dir}: cannot write the spill files there ({exc.strerror or exc}); they "
                             "take 4 * units * h * w bytes per image and model") from exc
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)


def _analyse(runners: list[Runner], source: ConceptSource, spill_dir: Path, options: UnitsOptions,
             resize: str) -> Analysis:
    skipped: list[tuple[Path, str]] = []
    kept: list[int] = []
    frames: list[Frame] = []
    stats: list[UnitStats] = []
    spills: list[_Spill] = []
    seconds = {"features": 0.0, "inference": 0.0, "tally": 0.0}
    batches = image_batches(list(range(len(source.images))), runners[0].spec, BatchOptions(
        batch_size=options.batch_size, resize=resize, max_pixels=options.max_pixels, prefetch=options.prefetch),
        path_of=lambda i: source.images[i], on_skip=lambda i, reason: skipped.append((source.images[i], reason)))
    threads = cv2.getNumThreads()
    if options.prefetch > 0 and all(r.computes_on_cpu for r in runners):
        cv2.setNumThreads(1)  # the loader decodes beside the model: OpenCV's threads would take its cores
    start = time.perf_counter()
    bar = _progress(len(source.images), "features", options.progress)
    try:
        for batch in batches:
            for m, runner in enumerate(runners):
                began = time.perf_counter()
                features = runner.infer(batch.tensors, features=True, outputs="classes").features
                seconds["inference"] += time.perf_counter() - began
                if features is None or features.ndim != 4:
                    raise CamdeployError(f"{runner.name} runner: MODEL {runner.model_path} gives no 4-D features "
                                         "output; re-export it with `camdeploy export`")
                features = np.ascontiguousarray(features, dtype=np.float32)
                if not stats[m:]:
                    shape = (int(features.shape[2]), int(features.shape[3]))
                    if stats and (features.shape[1], *shape) != (stats[0].units, *stats[0].map_shape):
                        raise CamdeployError(
                            f"--compare {runner.model_path}: features {list(features.shape[1:])}, MODEL's are "
                            f"{[stats[0].units, *stats[0].map_shape]}; variants must have the same units")
                    stats.append(UnitStats(int(features.shape[1]), shape, len(source.images), options.top_k,
                                           options.quantile))
                    spills.append(_Spill(spill_dir / f"model{m}.f32", int(np.prod(features.shape[1:]))))
                stats[m].add(features)
                spills[m].write(features)
            kept.extend(batch.items)
            frames.extend(batch.frames)
            bar.update(len(kept) + len(skipped) - bar.n)
    finally:
        batches.close()
        bar.close()
        cv2.setNumThreads(threads)
    seconds["features"] = time.perf_counter() - start
    if not kept:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise CamdeployError(f"none of the {len(source.images)} images could be read{first}")
    map_shape = stats[0].map_shape
    maps = [spill.finish() for spill in spills]
    if options.saturated not in SATURATED:
        raise CamdeployError(f"--saturated {options.saturated!r}: expected one of {', '.join(SATURATED)}")
    thresholds = [s.thresholds() for s in stats]
    # T at the largest value of a unit that has others: its top quantile is one value (a constant unit is not)
    saturated = [(t >= s.top_values[:, 0]) & (s.top_values[:, 0] > s.minimum) for t, s in zip(thresholds, stats,
                                                                                              strict=True)]
    mask_thresholds = [np.where(sat, np.nextafter(t, np.float32(-np.inf)), t) if options.saturated == "include"
                       else t for t, sat in zip(thresholds, saturated, strict=True)]
    tallies: list[Tally | None] = [None] * len(runners)
    if source.has_concepts:
        start = time.perf_counter()
        bar = _progress(len(kept), "tally", options.progress)
        lock = threading.Lock()
        stop = threading.Event()

        def done() -> None:
            if stop.is_set():  # Ctrl-C or another worker failed: stop early
                raise KeyboardInterrupt
            with lock:
                bar.update(1)

        # Workers over contiguous ranges of images, each with its own counts, summed at the end:
        # the tally's NumPy work (resizes, comparisons, products) releases the GIL.
        workers = max(1, min(options.workers or usable_cpus(), len(kept)))
        items = list(zip(kept, frames, strict=True))
        bounds = np.linspace(0, len(kept), workers + 1).astype(int)
        units = [s.units for s in stats]
        try:
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="camdeploy-tally") as pool:
                futures = [pool.submit(_tally_share, source, items, range(bounds[w], bounds[w + 1]), maps,
                                       mask_thresholds, units, map_shape, done) for w in range(workers)]
                try:
                    shares = [f.result() for f in futures]
                except BaseException:
                    stop.set()
                    raise
        finally:
            bar.close()
        tallies = [Tally.total([share[m] for share in shares]) for m in range(len(runners))]
        seconds["tally"] = time.perf_counter() - start
    del maps  # the memory maps, before their files are removed
    models = []
    for m, runner in enumerate(runners):
        name = runner.model_path.name if runner.model_path else runner.name
        tally = tallies[m]
        models.append(ModelUnits(
            name=name, description=runner.describe(), thresholds=thresholds[m], mask_thresholds=mask_thresholds[m],
            saturated=saturated[m], top_values=stats[m].top_values,
            top_images=stats[m].top_images, top_maps=stats[m].top_maps, class_weight=runner.class_weight(),
            tally=tally.result(source.categories, source.labels, options.iou_threshold, options.min_images)
            if tally else None))
    return Analysis(models=models, source=source, images=kept, frames=frames, skipped=skipped, map_shape=map_shape,
                    options=options, seconds=seconds)
