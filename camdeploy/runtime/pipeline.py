"""Image files in, ``results.jsonl`` (and overlays) out, through any runner; runs that lose nothing.

An output folder holds:

* ``results.jsonl``: one JSON object per image (file, classes, labels, scores, boxes), appended as
  batches finish, each line written whole; input order. An interrupted or killed run leaves every
  finished image in it.
* ``failures.jsonl``: one object per input left out, ``{"file", "reason", "stage"}``: ``list``
  (a broken link, a loop, an entry that is not a file) or ``read`` (unreadable, corrupt, too large).
* ``run.json``: what produced the results (camdeploy version, the model file and its SHA-256,
  backend, options that change results), the status (``running``, ``complete``,
  ``interrupted``) and the counts. ``--resume`` checks it against the new run and refuses a
  mismatch; it then skips every file already in ``results.jsonl`` (a partial last line left by a
  kill is dropped) and retries the failed ones.

File names: ``file`` is the path as listed. A name that is not valid UTF-8 (possible on Linux)
cannot be written as JSON text exactly: ``file`` then shows it with U+FFFD in place of the bad
bytes, and ``file_b64`` holds its exact bytes, base64-encoded (``os.fsdecode(base64.b64decode(...))``
opens it again).

Memory does not grow with the number of images: the summary keeps counts, each batch is written and
dropped, and decoded images are kept only for overlays.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

import camdeploy
from camdeploy.atomic import file_sha256, write_text
from camdeploy.console import warn
from camdeploy.errors import CamdeployError
from camdeploy.runtime.batches import BatchOptions, image_batches
from camdeploy.runtime.inputs import Listing
from camdeploy.runtime.overlay import draw_overlay
from camdeploy.runtime.result import CamResult
from camdeploy.runtime.runner import Runner

RESULTS_NAME = "results.jsonl"
FAILURES_NAME = "failures.jsonl"
MANIFEST_NAME = "run.json"
RESUME_KEYS = ("model_sha256", "backend", "resize", "box_threshold", "int8", "why")
"""Settings that change the results: a resumed run must have the same."""


@dataclass(frozen=True)
class RunOptions:
    """Options of :func:`run_files`."""

    batch_size: int = 8
    resize: str | None = None
    """``stretch`` or ``crop``; default: the mode stored in the model."""
    overlays: bool = False
    progress: bool = True
    resume: bool = False
    """Complete the results already in the folder (same model and settings), skipping their files."""
    overwrite: bool = False
    """Start over in a folder that holds results (they are lost)."""
    max_pixels: int | None = None
    """Largest image to decode (default: :data:`camdeploy.runtime.images.DEFAULT_MAX_PIXELS`)."""
    prefetch: int = 2
    """Batches read and prepared ahead, while the previous one runs."""
    int8: str = "auto"
    """Recorded in ``run.json`` (how the runner runs INT8), compared by ``--resume``."""
    why: int = 0
    """Units per record behind the top class's logit (a ``why`` field, see
    :func:`camdeploy.units.classes.why`); 0: none."""
    why_concepts: str | None = None
    """The ``camdeploy units`` report whose unit labels ``why`` names."""


@dataclass
class RunSummary:
    """What :func:`run_files` did: counts, not records."""

    out_dir: Path
    total: int = 0
    """Images listed."""
    processed: int = 0
    """Images whose results this run wrote."""
    previously: int = 0
    """Images already in ``results.jsonl`` from an earlier run (``--resume``)."""
    skipped: int = 0
    """Inputs this run left out (in ``failures.jsonl``), listing problems included."""
    overlays: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    remaining: int = 0
    """Images not reached (an interrupted run)."""
    unlisted: int = 0
    """Results already in ``results.jsonl`` (``--resume``) of files this run does not list: kept."""

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_NAME

    @property
    def failures_path(self) -> Path:
        return self.out_dir / FAILURES_NAME

    @property
    def complete(self) -> bool:
        """Every listed input has a result."""
        return not self.interrupted and self.skipped == 0 and self.remaining == 0

    def counts(self) -> dict[str, int]:
        return {"listed": self.total, "processed": self.processed, "previously": self.previously,
                "skipped": self.skipped, "remaining": self.remaining, "unlisted": self.unlisted}


class RecordSource(Protocol):
    """An engine that turns the files of a run into records somewhere else than this process's
    loader and runner (:class:`camdeploy.distributed.ray_batch.RayRecords`: a Ray cluster).
    :func:`run_files` keeps everything else: the folder, resume, failures, ``run.json``, progress."""

    settings: dict[str, object]
    """Added to the run's settings in ``run.json`` (the engine and how it ran; not compared by ``--resume``)."""

    def records(self, files: list[Path], on_skip: Callable[[Path, str], None]) -> Iterator[list[dict]]:
        """``results.jsonl`` objects for ``files``, in their order, a list at a time; a file that
        cannot be read goes to ``on_skip(path, reason)`` instead, before the records that follow it."""
        ...


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in the CLI) stopped :func:`run_files`; ``summary`` says how far it got."""

    def __init__(self, summary: RunSummary):
        super().__init__("interrupted")
        self.summary = summary


def file_fields(path: Path | str) -> dict[str, str]:
    """``file`` (and ``file_b64`` for a name that is not valid UTF-8) of a record."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate escapes: undecodable bytes in the name
        raw = os.fsencode(text)
        return {"file": raw.decode("utf-8", "replace"), "file_b64": base64.b64encode(raw).decode("ascii")}
    return {"file": text}


def record_path(record: dict) -> bytes:
    """The exact bytes of the file name of a results or failures record."""
    if "file_b64" in record:
        return base64.b64decode(record["file_b64"])
    return os.fsencode(record["file"])


def result_record(path: Path, result: CamResult, index: int, class_names: Sequence[str]) -> dict:
    """One ``results.jsonl`` object: file, classes, labels, scores, boxes (original pixels)."""
    if result.boxes is None:
        raise CamdeployError("result_record: the result has no boxes (infer with outputs 'boxes' or 'all')")
    classes = [int(c) for c in result.classes[index]]
    return {
        **file_fields(path),
        "classes": classes,
        "labels": [class_names[c] for c in classes],
        "scores": [round(float(s), 6) for s in result.scores[index]],
        "boxes": [[round(float(v), 2) for v in box] for box in result.boxes[index]],
    }



class _Appender:
    """A JSON-lines file appended whole lines at a time (one write per call). A write that fails
    part-way (a full disk) is cut back to the last whole line before the error is raised, so the
    file never ends in half a line. Its writer holds the folder's lock: nobody else appends."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._end = os.lseek(self._fd, 0, os.SEEK_END)

    def write(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._end)  # no half line stays behind
            raise
        self._end += len(data)

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


def _read_results(path: Path) -> set[bytes]:
    """The files already in a results file; a partial last line (a killed write) is cut off."""
    done: set[bytes] = set()
    if not path.is_file():
        return done
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # a line cut short by a kill: drop it, it is redone
        with open(path, "r+b") as handle:
            handle.truncate(end)
    for number, line in enumerate(data[:end].splitlines(), start=1):
        try:
            done.add(record_path(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise CamdeployError(f"--resume: {path} line {number} is not a camdeploy result ({exc}); "
                                 "it was not written by `camdeploy run`") from None
    return done


def _settings(runner: Runner, model: Path | None, options: RunOptions) -> dict[str, object]:
    return {"model": str(model.resolve()) if model else None, "model_sha256": file_sha256(model) if model else None,
            "backend": runner.name, "execution": runner.execution, "resize": options.resize or runner.spec.resize,
            "box_threshold": runner.box_threshold, "int8": options.int8, "topk": runner.spec.topk,
            **({"why": options.why, "why_concepts": options.why_concepts} if options.why else {})}


def _prepare_folder(out_dir: Path, settings: dict[str, object], options: RunOptions) -> set[bytes]:
    """Check what the folder holds against this run; return the files to skip."""
    results, manifest = out_dir / RESULTS_NAME, out_dir / MANIFEST_NAME
    has_results = results.is_file() and results.stat().st_size > 0
    if options.resume:
        if not manifest.is_file():
            if has_results:
                raise CamdeployError(f"--resume: {out_dir} holds {RESULTS_NAME} but no {MANIFEST_NAME} to check it "
                                     "against; it was not written by this camdeploy. Use --overwrite to start over")
            return set()
        try:
            before = json.loads(manifest.read_text(encoding="utf-8"))["settings"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CamdeployError(f"--resume: cannot read {manifest} ({exc}); use --overwrite to start over") from None
        for key in RESUME_KEYS:
            if before.get(key) != settings.get(key):
                raise CamdeployError(
                    f"--resume: the results in {out_dir} were made with {key} {before.get(key)!r}, this run has "
                    f"{settings.get(key)!r}; resume with the same model and settings, or use --overwrite to start over"
                )
        return _read_results(results)
    if has_results and not options.overwrite:
        lines = results.read_bytes().count(b"\n")
        raise CamdeployError(f"--out {out_dir}: already holds {RESULTS_NAME} ({lines} results); add --resume to "
                             "complete that run, or --overwrite to start over (the results are lost)")
    for name in (RESULTS_NAME, FAILURES_NAME):
        (out_dir / name).unlink(missing_ok=True)
    return set()


def _overlay_names(files: Sequence[Path]) -> dict[bytes, str]:
    """A fixed overlay name per image: ``STEM_cam.png``, ``STEM_2_cam.png`` for the second file with
    that stem in the listing, ... (the same in a resumed run)."""
    seen: dict[str, int] = {}
    names = {}
    for path in files:
        count = seen[path.stem] = seen.get(path.stem, 0) + 1
        names[os.fsencode(path)] = f"{path.stem}_cam.png" if count == 1 else f"{path.stem}_{count}_cam.png"
    return names


MANIFEST_RESERVE = 1024
"""Spaces after the JSON of a ``running`` run.json: room to rewrite it in place with the final
status should the disk fill up (a new file cannot be written then)."""


def _write_manifest(path: Path, document: dict, label: str, reserve: bool = False) -> None:
    """Write ``run.json`` atomically; when that fails (a full disk), rewrite the existing file in
    place, compact, if it fits in the room the ``running`` manifest kept (:data:`MANIFEST_RESERVE`)."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    try:
        write_text(path, text + (" " * MANIFEST_RESERVE + "\n" if reserve else ""), label=label)
        return
    except CamdeployError as exc:
        error = exc
    compact = (json.dumps(document, ensure_ascii=False) + "\n").encode("utf-8")
    try:
        size = path.stat().st_size
        if len(compact) <= size:
            with open(path, "r+b") as handle:
                handle.write(compact + b" " * (size - len(compact)))  # JSON allows trailing spaces
                handle.flush()
                os.fsync(handle.fileno())
            return
    except OSError:
        pass
    raise error


def run_files(runner: Runner, inputs: Sequence[Path] | Listing, out_dir: str | Path,
              options: RunOptions = RunOptions(), report: Callable[[str], None] = warn,
              model: Path | None = None, source: RecordSource | None = None) -> RunSummary:
    """Run ``runner`` (already open) over image files; write ``out_dir/results.jsonl``,
    ``failures.jsonl`` and ``run.json`` (see the module's docstring).

    ``inputs`` is a list of image paths, or the :class:`Listing` of the user's inputs (whose
    problems are recorded as failures). ``model`` is the exported file behind the run, recorded
    and checked on resume (default: the runner's). A file that cannot be read is reported through
    ``report`` and skipped. Ctrl-C raises :class:`RunInterrupted` after the results are safe.
    ``source``, when given, produces the records instead of this process (no overlays then);
    ``runner`` only describes the run (settings, ``run.json``) and need not be open.

    The run holds the folder's lock (:mod:`camdeploy.lock`) from start to end: another writer
    (a run, a resume, an overwrite, in this process's lock or another's) is refused before it
    changes anything. A run that fails (a full disk, a cluster that stops answering) keeps every
    whole line, says ``failed`` and why in ``run.json``, and raises :class:`CamdeployError`.
    """
    from camdeploy.lock import hold_folder

    if isinstance(out_dir, str) and not out_dir.strip():
        raise CamdeployError("--out '': expected a folder path (an empty path would write into the current folder)")
    if options.batch_size < 1:
        raise CamdeployError(f"--batch-size {options.batch_size}: expected a positive number")
    if options.resume and options.overwrite:
        raise CamdeployError("--resume and --overwrite: choose one (complete the results, or start over)")
    if source is not None and options.overlays:
        raise CamdeployError("--overlays: overlays are drawn by the local engine only; run without them, or "
                             "run `camdeploy run --overlays` on the images you want to look at")
    if source is not None and options.why:
        raise CamdeployError("--why: the units behind a prediction are found by the local engine only; run "
                             "without --why, or with --engine local")
    explain = None
    if options.why:
        from camdeploy.units.classes import explainer

        explain = explainer(runner, options.why, options.why_concepts)
    out_dir = Path(out_dir)
    with hold_folder(out_dir):
        return _run_locked(runner, inputs, out_dir, options, report, model, source, explain)


def _run_locked(runner: Runner, inputs: Sequence[Path] | Listing, out_dir: Path, options: RunOptions,
                report: Callable[[str], None], model: Path | None, source: RecordSource | None,
                explain: Callable[[CamResult], list[list[dict[str, object]]]] | None) -> RunSummary:
    """:func:`run_files` once the folder is this process's."""
    from tqdm import tqdm

    listing = inputs if isinstance(inputs, Listing) else Listing(files=list(inputs))
    label = f"--out {out_dir}"
    settings = {**_settings(runner, model or runner.model_path, options), **(source.settings if source else {})}
    summary = RunSummary(out_dir, total=len(listing.files))
    try:
        done = _prepare_folder(out_dir, settings, options)
        write_text(out_dir / FAILURES_NAME, "", label=label)  # failures are retried: this run writes them anew
        results, failures = _Appender(out_dir / RESULTS_NAME), _Appender(out_dir / FAILURES_NAME)
    except OSError as exc:
        raise CamdeployError(f"{label}: cannot write there ({exc.strerror or exc})") from exc
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    error: str | None = None

    def manifest(status: str) -> None:
        document = {"camdeploy": camdeploy.__version__, "settings": settings, "status": status, "started": started,
                    "counts": summary.counts(), "seconds": round(summary.seconds, 3)}
        if error:
            document["error"] = error
        if listing.warnings:
            document["warnings"] = listing.warnings
        _write_manifest(out_dir / MANIFEST_NAME, document, label, reserve=status == "running")

    listed = {os.fsencode(path) for path in listing.files}
    summary.unlisted = len(done - listed)
    todo = [path for path in listing.files if os.fsencode(path) not in done]
    summary.previously = len(listing.files) - len(todo)
    summary.remaining = len(todo)
    overlay_names = _overlay_names(listing.files) if options.overlays else {}
    skipped: collections.deque[dict] = collections.deque()  # filled by the loader thread, drained here

    def on_skip(path: Path, reason: str) -> None:  # called in input order, possibly from the loader thread
        skipped.append({**file_fields(path), "reason": reason, "stage": "read"})
        report(f"skipped {reason}")

    def record_skips() -> None:
        taken = []
        while skipped:
            taken.append(skipped.popleft())
        if taken:
            failures.write(taken)
            summary.skipped += len(taken)
            summary.remaining -= len(taken)
            bar.update(len(taken))

    def local_records(files: list[Path], on_skip: Callable[[Path, str], None]) -> Iterator[list[dict]]:
        batches = image_batches(files, runner.spec, BatchOptions(
            batch_size=options.batch_size, resize=options.resize, keep_images=options.overlays,
            max_pixels=options.max_pixels, prefetch=options.prefetch), on_skip=on_skip)
        # The loader thread decodes while the model runs: on the CPU, OpenCV's own worker threads would
        # only take cores from the model's.
        threads = cv2.getNumThreads()
        if runner.computes_on_cpu and options.prefetch > 0:
            cv2.setNumThreads(1)
        try:
            for batch in batches:
                result = runner.infer_images(batch.tensors, batch.frames, features=bool(options.why),
                                             outputs="all" if options.overlays else "boxes")
                records = [result_record(path, result, i, runner.spec.class_names)
                           for i, path in enumerate(batch.items)]
                if explain is not None:
                    for record, reasons in zip(records, explain(result), strict=True):
                        record["why"] = reasons
                if options.overlays and batch.images is not None and result.cams is not None:
                    for i, path in enumerate(batch.items):
                        label = f"{records[i]['labels'][0]} {records[i]['scores'][0]:.2f}"
                        picture = draw_overlay(batch.images[i], result.cams[i, 0],
                                               result.boxes[i, 0], label, batch.frames[i])  # type: ignore[index]
                        target = out_dir / overlay_names[os.fsencode(path)]
                        if not cv2.imwrite(str(target), np.ascontiguousarray(picture[:, :, ::-1])):
                            raise OSError(f"cannot write {target}")
                        summary.overlays += 1
                yield records
        finally:
            batches.close()
            cv2.setNumThreads(threads)

    start = time.perf_counter()
    status = "interrupted"
    bar = tqdm(total=len(listing.files), initial=summary.previously, unit="img",
               disable=not options.progress or None, file=sys.stderr)
    produced: Iterator[list[dict]] | None = None
    try:
        manifest("running")
        for entry, reason in listing.problems:
            failures.write([{**file_fields(entry), "reason": reason, "stage": "list"}])
            report(f"skipped {entry}: {reason}")
            summary.skipped += 1
        produced = source.records(todo, on_skip) if source else local_records(todo, on_skip)
        for records in produced:
            record_skips()
            results.write(records)
            summary.processed += len(records)
            summary.remaining -= len(records)
            bar.update(len(records))
        status = "complete"
    except KeyboardInterrupt:
        summary.interrupted = True
    except OSError as exc:
        status, error = "failed", f"{label}: cannot write there ({exc.strerror or exc})"
        raise CamdeployError(error) from exc
    except CamdeployError as exc:
        status, error = "failed", str(exc)
        raise
    except Exception as exc:
        status, error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        late = _finish(produced, record_skips, bar, results, failures)
        if late is not None and error is None:  # the last lines could not be made safe
            status, error = "failed", f"{label}: cannot write there ({late.strerror or late})"
        summary.seconds = time.perf_counter() - start
        try:
            manifest(status)
        except CamdeployError:
            if sys.exc_info()[0] is None and late is None:
                raise
            # an error is on its way out already (or follows): it says what went wrong first
    if late is not None:
        raise CamdeployError(error) from late
    if summary.interrupted:
        raise RunInterrupted(summary)
    return summary


def _finish(produced: Iterator[list[dict]] | None, record_skips: Callable[[], None], bar: Any,
            results: _Appender, failures: _Appender) -> OSError | None:
    """Stop the producer (its loader, or its cluster's work), write the last skips, close the files;
    every step is tried. Returns the first write error."""
    first: OSError | None = None
    steps: list[Callable[[], object]] = [record_skips, bar.close, results.close, failures.close]
    close = getattr(produced, "close", None)
    if close is not None:
        steps.insert(0, close)
    for step in steps:
        try:
            step()
        except OSError as exc:
            first = first or exc
    return first
