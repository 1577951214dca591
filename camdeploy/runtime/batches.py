"""Images to model batches: read, decode, prepare, skip what cannot be read, and batch; the one loader
behind ``camdeploy run``, ``eval`` and ``calibrate``.

Reading and preparing happen in a background thread, a bounded number of batches ahead
(``prefetch``), so that they overlap inference: OpenCV and ONNX Runtime both release the GIL.
Memory per batch depends only on the batch size and the model input, plus the decoded images when
they are kept (``keep_images``, for overlays). Order is that of ``items``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.images import DecodeOptions, Frame, prepare_loaded, read_image

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    """Prepared images and what they came from, in the order of the items."""

    items: list[T]
    tensors: np.ndarray
    """``float32 [B, 3, S_h, S_w]``."""
    frames: list[Frame]
    images: list[np.ndarray] | None = None
    """The decoded RGB images (possibly reduced), only when asked to keep them."""


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int = 8
    resize: str | None = None
    """``stretch`` or ``crop``; default: the model's."""
    keep_images: bool = False
    max_pixels: int | None = None
    """The decode limit (default :data:`camdeploy.runtime.images.DEFAULT_MAX_PIXELS`)."""
    prefetch: int = 2
    """Batches prepared ahead in a background thread; 0: prepare in the caller's thread."""


def _prepared(items: Iterable[T], path_of: Callable[[T], Path], spec: ModelSpec, options: BatchOptions,
              on_skip: Callable[[T, str], None]) -> Iterator[Batch[T]]:
    resize = options.resize or spec.resize
    decode = DecodeOptions(target=(spec.input_height, spec.input_width), resize=resize,
                           **({"max_pixels": options.max_pixels} if options.max_pixels else {}))
    kept: list[tuple[T, np.ndarray, Frame, np.ndarray | None]] = []
    for item in items:
        try:
            loaded = read_image(path_of(item), decode)
            tensor, frame = prepare_loaded(loaded, spec, resize)
        except CamdeployError as exc:
            on_skip(item, str(exc))
            continue
        kept.append((item, tensor, frame, loaded.pixels if options.keep_images else None))
        if len(kept) == options.batch_size:
            yield _batch(kept, options.keep_images)
            kept = []
    if kept:
        yield _batch(kept, options.keep_images)


def _batch(kept: list, keep_images: bool) -> Batch:
    return Batch([k[0] for k in kept], np.stack([k[1] for k in kept]), [k[2] for k in kept],
                 [k[3] for k in kept] if keep_images else None)


_END = object()


def _as_path(item: object) -> Path:
    return Path(item)  # type: ignore[arg-type]


def image_batches(items: Iterable[T], spec: ModelSpec, options: BatchOptions = BatchOptions(), *,
                  path_of: Callable[[T], Path] = _as_path, on_skip: Callable[[T, str], None]
                  ) -> Generator[Batch[T], None, None]:
    """Batches of prepared images for ``items`` (paths, or anything ``path_of`` maps to a path);
    an item that cannot be read or decoded is passed to ``on_skip`` with the reason, and left out.

    ``on_skip`` is called from the background thread when ``options.prefetch`` > 0, in order.
    """
    if options.batch_size < 1:
        raise CamdeployError(f"--batch-size {options.batch_size}: expected a positive number")
    source = _prepared(items, path_of, spec, options, on_skip)
    if options.prefetch <= 0:
        yield from source
        return
    ready: queue.Queue = queue.Queue(maxsize=options.prefetch)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in source:
                while not stop.is_set():
                    try:
                        ready.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    worker = threading.Thread(target=produce, name="camdeploy-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            got = ready.get()
            if got is _END:
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:  # the consumer stopped early (an error, Ctrl-C, a closed generator): stop the thread
        stop.set()
        while worker.is_alive():
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
