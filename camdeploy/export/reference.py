"""The PyTorch reference: the model's eager forward plus the same CAM math as the exported graph.

It lives with the code that needs torch (the model contract and the CAM head); the runtime never
imports it. On the first batch it runs, the runner also checks that the model's own ``forward``
gives the same logits as ``linear(pool(features(x)))`` on those real inputs, not only on the
export's random probe.

Preprocessing, T and the box threshold come from the :class:`ModelSpec` (usually the exported
file's metadata), so that the reference and the graph see identical inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from camdeploy.errors import CamdeployError
from camdeploy.export.cam_head import OUTPUT_NAMES, CamModel
from camdeploy.export.contract import find_contract
from camdeploy.export.sources import load_model
from camdeploy.metadata import ModelSpec
from camdeploy.runtime.runner import Runner


class TorchRunner(Runner):
    """Runs a PyTorch classifier eagerly with :class:`camdeploy.export.cam_head.CamModel`.

    Args:
        model: an ``nn.Module``, or a ``--model`` string (built-in name or ``module:callable``).
        spec: input size, normalisation, T and threshold to use.
        box_threshold: overrides ``spec.box_threshold``.
        feature_module, linear_module: the contract override, as for export.
        threads: torch's intra-op threads (default: torch's own).
    """

    name = "torch"
    reference = True

    def __init__(self, model: object, spec: ModelSpec, box_threshold: float | None = None,
                 feature_module: str | None = None, linear_module: str | None = None, threads: int | None = None):
        super().__init__(spec, box_threshold)
        if threads is not None and threads < 1:
            raise CamdeployError(f"--threads {threads}: expected a positive number")
        self.threads = threads
        self.model = model
        self.feature_module = feature_module
        self.linear_module = linear_module
        self.execution = "PyTorch eager, fp32"
        self._checked = False
        self._module: Any = None
        self._cam_model: CamModel | None = None

    @property
    def cam_model(self) -> CamModel:
        """The open model's :class:`CamModel` (its ``features`` and ``linear`` modules, e.g. for a
        hook-based peer such as torchcam)."""
        if self._cam_model is None:
            raise CamdeployError("torch runner: call open() or use `with runner:` first")
        return self._cam_model

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model": self.model if isinstance(self.model, str) else type(self.model).__name__}

    def open(self) -> None:
        size = (self.spec.input_height, self.spec.input_width)
        model = self.model
        if isinstance(model, str):
            if size[0] != size[1]:
                raise CamdeployError(f"--model {model}: only square inputs are supported, got {size}")
            model = load_model(model, input_size=size[0]).module
        if not isinstance(model, torch.nn.Module):
            raise CamdeployError(f"model: got {type(model).__name__}; expected a torch.nn.Module or a --model name")
        contract = find_contract(model, size, feature_module=self.feature_module,
                                 linear_module=self.linear_module, pooling=self.spec.pooling)
        if contract.linear.out_features != len(self.spec.class_names):
            raise CamdeployError(
                f"--model: the PyTorch model has {contract.linear.out_features} classes but the "
                f"exported model has {len(self.spec.class_names)}; use the model it was exported from "
                f"({self.spec.source_model})"
            )
        self._cam_model = CamModel(contract, self.spec.topk, size).eval()
        self._module = model
        if self.threads:
            torch.set_num_threads(self.threads)
        self.is_open = True

    def close(self) -> None:
        self._cam_model = None
        self.is_open = False

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        cam_model = self.cam_model
        with torch.inference_mode():
            x = torch.from_numpy(images)
            computed = cam_model.classify(x) if outputs == "classes" else cam_model(x)
            out = dict(zip(OUTPUT_NAMES, computed, strict=False))
            if not self._checked:  # once: the decomposition reproduces the model's own forward
                self._check_forward(self._module(x), out["logits"])
        if not features:
            del out["features"]
        return {name: tensor.numpy() for name, tensor in out.items()}

    def _check_forward(self, logits: Any, decomposed: Any) -> None:
        error = float((logits - decomposed).abs().max())
        tolerance = 1e-4 * (1.0 + float(logits.abs().max()))
        if error > tolerance:
            raise CamdeployError(f"torch runner: on this batch the model's own forward differs from "
                                 f"linear(pool(features(x))) by {error:.3g} (tolerance {tolerance:.3g}); "
                                 "the model does not follow the GAP contract on real inputs")
        self._checked = True

    def class_weight(self) -> np.ndarray:
        return self.cam_model.linear.weight.detach().numpy().astype(np.float32)
