"""Running camdeploy on Ray: batch inference with Ray Data, an HTTP service with Ray Serve.

* :mod:`~camdeploy.distributed.cluster`: connecting to a cluster, or starting a private local one
  set up for small machines;
* :mod:`~camdeploy.distributed.model`: the model file to every node through the object store;
* :mod:`~camdeploy.distributed.ray_batch`: :func:`prepare_images` and :class:`CamPredictor` for
  ``Dataset.map_batches``, and ``camdeploy run --engine ray``;
* :mod:`~camdeploy.distributed.ray_serve`: ``camdeploy serve``.

Importing this package does not import Ray (the ``ray`` extra); its functions do, when called.

>>> from camdeploy.distributed import CamPredictor, prepare_images, share_model
"""

from camdeploy.distributed.model import SharedModel, share_model
from camdeploy.distributed.ray_batch import CamPredictor, prepare_images

__all__ = ["CamPredictor", "SharedModel", "prepare_images", "share_model"]
