"""Getting the model file to Ray's workers without a shared path.

The driver reads the ``.onnx`` file once and puts its bytes in Ray's object store
(:func:`share_model`). A worker that needs it (:func:`local_model`) first looks in a node-local
cache folder for a file named by its SHA-256; only when it is missing does it fetch the bytes,
which Ray copies to that node's object store once for all the workers there, and writes them
to the cache (atomically, checked against the SHA-256). So no worker opens the driver's path,
which a cluster's other machines usually do not have, and a node holds one copy of the file
whatever the number of actors or replicas on it.

The cache folder is ``$CAMDEPLOY_RAY_MODEL_DIR``, else ``camdeploy-ray-models`` in the system's
temporary folder, on each node.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camdeploy.atomic import file_sha256, write_bytes
from camdeploy.errors import CamdeployError
from camdeploy.metadata import ModelSpec, read_spec

CACHE_ENV = "CAMDEPLOY_RAY_MODEL_DIR"


@dataclass(frozen=True)
class SharedModel:
    """An exported model in Ray's object store, small enough to pass to every task and actor."""

    name: str
    """The file's name on the driver (for messages)."""
    sha256: str
    size: int
    spec: ModelSpec
    """Preprocessing, labels, T and the box threshold: what preparing images needs, without the file."""
    ref: Any
    """``ray.ObjectRef`` of the file's bytes."""


def share_model(path: str | os.PathLike[str]) -> SharedModel:
    """Read ``path`` (a camdeploy ``.onnx``) once and put it in the object store of the Ray cluster
    this process is connected to (``ray.init()`` first)."""
    import ray

    path = Path(path)
    spec = read_spec(path)  # the path is checked there before it is read
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CamdeployError(f"MODEL {path}: cannot read the file ({exc.strerror or exc})") from exc
    return SharedModel(path.name, hashlib.sha256(data).hexdigest(), len(data), spec, ray.put(data))


def cache_folder() -> Path:
    """This node's folder of model files received through the object store."""
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "camdeploy-ray-models")



def local_model(model: SharedModel | str | os.PathLike[str]) -> Path:
    """A path to the model on this node: the cached copy of a :class:`SharedModel` (fetched from
    the object store the first time on the node), or a plain path as given."""
    if not isinstance(model, SharedModel):
        return Path(model)
    target = cache_folder() / f"{model.sha256}.onnx"
    if target.is_file() and target.stat().st_size == model.size and file_sha256(target) == model.sha256:
        return target
    import ray

    data = ray.get(model.ref)
    if hashlib.sha256(data).hexdigest() != model.sha256:  # a corrupt transfer: never run it
        raise CamdeployError(f"MODEL {model.name}: the bytes received differ from the file's SHA-256 "
                             f"{model.sha256}")
    write_bytes(target, data, label=f"${CACHE_ENV} {cache_folder()}")
    return target
