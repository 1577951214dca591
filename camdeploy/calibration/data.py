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

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.images import list_images, load_image, prepare

DEFAULT_COUNT = 300


def pick_images(inputs: Sequence[str], count: int = DEFAULT_COUNT, seed: int = 0,
                exclude: Sequence[Path] = ()) -> list[Path]:
    """``count`` images drawn (seeded) from files and folders, leaving out ``exclude``."""
    if count < 1:
        raise CamdeployError(f"--count {count}: expected a positive number")
    excluded = {p.resolve() for p in exclude}
    pool = [p for p in list_images(list(inputs)) if p.resolve() not in excluded]
    if not pool:
        raise CamdeployError(f"--images {' '.join(inputs)}: no calibration images left after leaving out "
                             f"{len(excluded)} evaluation images")
    random.Random(seed).shuffle(pool)
    return sorted(pool[:count])


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
    ``CalibrationDataReader`` protocol (``get_next``/``rewind``)."""

    paths: list[Path]
    spec: ModelSpec
    batch_size: int = 8
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.paths:
            raise CamdeployError("calibration: no images")
        self._iterator: Iterator[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from tqdm import tqdm

        batch: list[np.ndarray] = []
        with tqdm(total=len(self.paths), unit="img", desc="calibration", disable=not self.progress or None,
                  file=sys.stderr) as bar:
            for path in self.paths:
                try:
                    batch.append(prepare(load_image(path), self.spec)[0])
                except CamdeployError as exc:
                    tqdm.write(f"camdeploy: warning: skipped {exc}", file=sys.stderr)
                bar.update(1)
                if len(batch) == self.batch_size:
                    yield {"images": np.stack(batch)}
                    batch = []
            if batch:
                yield {"images": np.stack(batch)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed, or None at the end; the call after that starts over, so that one source
        serves several quantizations."""
        if self._iterator is None:
            self._iterator = iter(self)
        feed = next(self._iterator, None)
        if feed is None:
            self._iterator = None
        return feed

    def rewind(self) -> None:
        self._iterator = None
