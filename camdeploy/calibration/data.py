"""Calibration data: a seeded, re-iterable source of model inputs from image files.

The images are prepared with the model's own preprocessing, read from its ONNX metadata, so
calibration sees exactly what inference will see. Evaluation images must never be calibration
images: :func:`refuse_overlap` stops a run that would use the same files for both.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camdeploy.console import warn
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.inputs import list_images

DEFAULT_COUNT = 300
DEFAULT_VERIFY_COUNT = 100
MIN_VERIFY_COUNT = 20
"""Fewest held-back images that :func:`draw_images` accepts for verification (a smaller slice says
little about agreement)."""


@dataclass(frozen=True)
class CalibrationDraw:
    """A seeded draw of calibration images: ``ranges`` set the quantization ranges; ``verification``
    is held back from them, to check the quantized model against the float one."""

    ranges: list[Path]
    verification: list[Path]


def draw_images(inputs: Sequence[str], count: int = DEFAULT_COUNT, seed: int = 0, exclude: Sequence[Path] = (),
                verify_count: int = 0, min_verify: int = MIN_VERIFY_COUNT) -> CalibrationDraw:
    """Draw (seeded) from files and folders, leaving out ``exclude``: ``verify_count`` images held
    back for verification first (at most a fifth of what is there, and at least ``min_verify``),
    then up to ``count`` for ranges."""
    if count < 1:
        raise CamdeployError(f"--count {count}: expected a positive number")
    if verify_count < 0:
        raise CamdeployError(f"--verify-count {verify_count}: expected 0 (no verification) or more")
    excluded = {p.resolve() for p in exclude}
    pool = [p for p in list_images(list(inputs)) if p.resolve() not in excluded]
    if not pool:
        raise CamdeployError(f"--images {' '.join(inputs)}: no calibration images left after leaving out "
                             f"{len(excluded)} evaluation images")
    random.Random(seed).shuffle(pool)
    held = min(verify_count, len(pool) // 5)
    if verify_count and held < min(verify_count, min_verify):
        raise CamdeployError(
            f"--images {' '.join(inputs)}: {len(pool)} images are too few to calibrate and to verify on "
            f"{min(verify_count, min_verify)} held-back images (a fifth of them at most); give at least "
            f"{5 * min(verify_count, min_verify)} images, or --verify-count 0 to skip the verification"
        )
    return CalibrationDraw(sorted(pool[held:held + count]), sorted(pool[:held]))


def pick_images(inputs: Sequence[str], count: int = DEFAULT_COUNT, seed: int = 0,
                exclude: Sequence[Path] = ()) -> list[Path]:
    """``count`` images drawn (seeded) from files and folders, leaving out ``exclude``."""
    return draw_images(inputs, count, seed, exclude).ranges


def refuse_overlap(calibration: Sequence[Path], evaluation: Sequence[Path]) -> None:
    """Raise if any calibration image is also an evaluation image (same file)."""
    shared = {p.resolve() for p in calibration} & {p.resolve() for p in evaluation}
    if shared:
        example = sorted(shared)[0]
        raise CamdeployError(
            f"{len(shared)} calibration images are also evaluation images (e.g. {example}); calibrate on "
            "other images (calibrate --exclude-data), or the evaluation flatters the quantized model"
        )


@dataclass
class CalibrationData:
    """Re-iterable feeds ``{"images": float32 [B, 3, S_h, S_w]}``; also ONNX Runtime's
    ``CalibrationDataReader`` protocol (``get_next``/``rewind``), and its strided one
    (``set_range`` over feeds, :meth:`feed_count`), which lets the calibrator take one feed at a
    time: memory stays that of one batch, and the histogram methods accept a last, smaller batch."""

    paths: list[Path]
    spec: ModelSpec
    batch_size: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.paths:
            raise CamdeployError("calibration: no images")
        if self.batch_size < 1:
            raise CamdeployError(f"calibration batch size {self.batch_size}: expected a positive number")
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None
        self._range = (0, self.feed_count())
        self._bar: Any = None

    def __len__(self) -> int:
        return len(self.paths)

    def feed_count(self) -> int:
        """Number of feeds (batches of at most ``batch_size`` files) in one pass."""
        return -(-len(self.paths) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.feeds(0, self.feed_count())

    def feeds(self, start: int, stop: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds ``start`` to ``stop - 1``; a file that cannot be read is reported and left out."""
        from tqdm import tqdm

        if self._bar is None or start == 0:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=len(self.paths), unit="img", desc="calibration",
                             disable=not self.progress or None, file=sys.stderr)
        bar = self._bar

        def skipped(path: Path, reason: str) -> None:
            warn(f"skipped {reason}")
            bar.update(1)

        paths = self.paths[start * self.batch_size:stop * self.batch_size]
        for batch in image_batches(paths, self.spec, BatchOptions(batch_size=self.batch_size), on_skip=skipped):
            bar.update(len(batch.items))
            yield {"images": batch.tensors}
        if stop >= self.feed_count():
            self._bar.close()
            self._bar = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """ONNX Runtime's strided protocol: the following :meth:`get_next` calls serve these feeds."""
        self._range = (start_index, min(end_index, self.feed_count()))
        self._iterator = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None at the end; the call after that starts over, so that one source
        serves several quantizations."""
        if self._iterator is None:
            self._iterator = self.feeds(*self._range)
        feed = next(self._iterator, None)
        if feed is None:
            self._iterator = None
        return feed

    def rewind(self) -> None:
        self._iterator = None
        self._range = (0, self.feed_count())
