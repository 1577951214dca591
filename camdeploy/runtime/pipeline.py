"""Image files in, ``results.jsonl`` (and overlays) out, through any runner."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.runtime.images import Frame, load_image, prepare
from camdeploy.runtime.overlay import draw_overlay
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True)
class RunOptions:
    """Options of :func:`run_files`."""

    batch_size: int = 8
    resize: str | None = None
    """``stretch`` or ``crop``; default: the mode stored in the model."""
    overlays: bool = False
    progress: bool = True


@dataclass
class RunSummary:
    """What :func:`run_files` did."""

    results_path: Path
    records: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    """``(file, reason)`` for every file that was skipped."""
    overlay_paths: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"camdeploy: warning: {message}", file=sys.stderr)  # keeps a progress bar intact


def _batches(paths: Sequence[Path], runner: Runner, options: RunOptions,
             failures: list[tuple[str, str]], report: Callable[[str], None]
             ) -> Iterator[tuple[list[Path], list[np.ndarray], np.ndarray, list[Frame]]]:
    """Load and prepare images in batches; unreadable files are reported and skipped."""
    batch: list[tuple[Path, np.ndarray, np.ndarray, Frame]] = []
    for path in paths:
        try:
            image = load_image(path)
        except CamdeployError as exc:
            failures.append((str(path), str(exc)))
            report(f"skipped {exc}")
            continue
        tensor, frame = prepare(image, runner.spec, options.resize)
        batch.append((path, image, tensor, frame))
        if len(batch) == options.batch_size:
            yield _unzip(batch)
            batch = []
    if batch:
        yield _unzip(batch)


def _unzip(batch: list[tuple[Path, np.ndarray, np.ndarray, Frame]]
           ) -> tuple[list[Path], list[np.ndarray], np.ndarray, list[Frame]]:
    return ([b[0] for b in batch], [b[1] for b in batch], np.stack([b[2] for b in batch]),
            [b[3] for b in batch])


def result_record(path: Path, result: CamResult, index: int, class_names: Sequence[str]) -> dict:
    """One ``results.jsonl`` object: file, classes, labels, scores, boxes (original pixels)."""
    classes = [int(c) for c in result.classes[index]]
    return {
        "file": str(path),
        "classes": classes,
        "labels": [class_names[c] for c in classes],
        "scores": [round(float(s), 6) for s in result.scores[index]],
        "boxes": [[round(float(v), 2) for v in box] for box in result.boxes[index]],
    }


def _overlay_path(out_dir: Path, path: Path, taken: set[str]) -> Path:
    name, counter = f"{path.stem}_cam.png", 1
    while name in taken:
        counter += 1
        name = f"{path.stem}_{counter}_cam.png"
    taken.add(name)
    return out_dir / name


def run_files(runner: Runner, paths: Sequence[Path], out_dir: str | Path,
              options: RunOptions = RunOptions(),
              report: Callable[[str], None] = _warn) -> RunSummary:
    """Run ``runner`` (already open) over image files; write ``out_dir/results.jsonl``.

    With ``options.overlays``, also write one PNG per image showing the top-1 CAM, box and label.
    A file that cannot be read is reported through ``report`` and skipped; the run goes on.
    ``results.jsonl`` appears only when the run completes (it is written under a temporary name).
    """
    if options.batch_size < 1:
        raise CamdeployError(f"--batch-size {options.batch_size}: expected a positive number")
    out_dir = Path(out_dir)
    summary = RunSummary(out_dir / RESULTS_NAME)
    partial = summary.results_path.with_name(RESULTS_NAME + ".partial")
    start = time.perf_counter()
    done = False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(partial, "w", encoding="utf-8") as sink:
            _run(runner, paths, out_dir, options, report, summary, sink)
        partial.replace(summary.results_path)
        done = True
    except OSError as exc:
        raise CamdeployError(f"--out {out_dir}: cannot write there ({exc.strerror or exc})") from exc
    finally:
        if not done and partial.is_file():  # failed or interrupted: leave no partial file behind
            partial.unlink()
    summary.seconds = time.perf_counter() - start
    return summary


def _run(runner: Runner, paths: Sequence[Path], out_dir: Path, options: RunOptions,
         report: Callable[[str], None], summary: RunSummary, sink: TextIO) -> None:
    from tqdm import tqdm

    names = runner.spec.class_names
    taken: set[str] = set()
    with tqdm(total=len(paths), unit="img", disable=not options.progress or None, file=sys.stderr) as bar:
        for batch_paths, images, tensors, frames in _batches(paths, runner, options, summary.failures, report):
            result = runner.infer_images(tensors, frames)
            for i, path in enumerate(batch_paths):
                record = result_record(path, result, i, names)
                summary.records.append(record)
                sink.write(json.dumps(record) + "\n")
                if options.overlays:
                    label = f"{record['labels'][0]} {record['scores'][0]:.2f}"
                    picture = draw_overlay(images[i], result.cams[i, 0], result.boxes[i, 0], label, frames[i])
                    target = _overlay_path(out_dir, path, taken)
                    if not cv2.imwrite(str(target), picture[:, :, ::-1]):
                        raise OSError(f"cannot write {target}")
                    summary.overlay_paths.append(target)
            bar.update(len(batch_paths))
        bar.update(len(paths) - bar.n)
