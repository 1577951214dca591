"""The PyTorch reference: the model's eager forward plus the same CAM math as the exported graph.

It lives with the code that needs torch (the model contract and the CAM head); the runtime never
imports it. On the first batch it runs, the runner also checks that the model's own ``forward``
gives the same logits as ``linear(pool(features(x)))`` on those real inputs, not only on the
export's random probe.

Preprocessing, T and the box threshold come from the :class:`ModelSpec` (usually the exported
file's metadata), so that the reference and the graph see identical inputs.

On a GPU (``device="cuda"``) the reference is PyTorch eager on CUDA, the baseline a deployment on
that GPU is compared with: batches go to the device and every output comes back to the host. It
computes in IEEE float32 there: TensorFloat-32, which PyTorch allows for cuDNN convolutions by
default, is switched off while it runs (and restored after), so that it stays the fp32 reference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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
        device: where PyTorch runs: ``cpu`` (default), ``cuda`` or ``cuda:N``.
    """

    name = "torch"
    reference = True

    def __init__(self, model: object, spec: ModelSpec, box_threshold: float | None = None,
                 feature_module: str | None = None, linear_module: str | None = None, threads: int | None = None,
                 device: str = "cpu"):
        super().__init__(spec, box_threshold)
        if threads is not None and threads < 1:
            raise CamdeployError(f"--threads {threads}: expected a positive number")
        self.threads = threads
        self.device = check_device(device)
        self.computes_on_cpu = self.device == "cpu"
        self.model = model
        self.feature_module = feature_module
        self.linear_module = linear_module
        self.execution = "PyTorch eager, fp32" + ("" if self.device == "cpu" else f", {self.device}")
        self._checked = False
        self._module: Any = None
        self._cam_model: CamModel | None = None
        self._torch_device: Any = None

    @property
    def cam_model(self) -> CamModel:
        """The open model's :class:`CamModel` (its ``features`` and ``linear`` modules, e.g. for a
        hook-based peer such as torchcam)."""
        if self._cam_model is None:
            raise CamdeployError("torch runner: call open() or use `with runner:` first")
        return self._cam_model

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "model": self.model if isinstance(self.model, str) else type(self.model).__name__,
                "device": self.device}

    def open(self) -> None:
        torch_device = _torch_device(self.device)
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
        self._cam_model = CamModel(contract, self.spec.topk, size).eval().to(torch_device)
        self._module = model.to(torch_device)  # in place; CamModel shares its modules
        self._torch_device = torch_device
        if self.threads:
            torch.set_num_threads(self.threads)
        self.is_open = True

    def close(self) -> None:
        self._cam_model = None
        self.is_open = False

    def _run(self, images: np.ndarray, features: bool, outputs: str) -> dict[str, np.ndarray]:
        cam_model = self.cam_model
        with torch.inference_mode(), _ieee_fp32() if self.device != "cpu" else nullcontext():
            x = torch.from_numpy(images).to(self._torch_device)
            computed = cam_model.classify(x) if outputs == "classes" else cam_model(x)
            out = dict(zip(OUTPUT_NAMES, computed, strict=False))
            if not self._checked:  # once: the decomposition reproduces the model's own forward
                self._check_forward(self._module(x), out["logits"])
        if not features:
            del out["features"]
        return {name: tensor.cpu().numpy() for name, tensor in out.items()}

    def _check_forward(self, logits: Any, decomposed: Any) -> None:
        error = float((logits - decomposed).abs().max())
        tolerance = 1e-4 * (1.0 + float(logits.abs().max()))
        if error > tolerance:
            raise CamdeployError(f"torch runner: on this batch the model's own forward differs from "
                                 f"linear(pool(features(x))) by {error:.3g} (tolerance {tolerance:.3g}); "
                                 "the model does not follow the GAP contract on real inputs")
        self._checked = True

    def class_weight(self) -> np.ndarray:
        return self.cam_model.linear.weight.detach().cpu().numpy().astype(np.float32)

    def to_device(self, images: np.ndarray) -> Any:
        """A preprocessed batch as a tensor on this runner's device (for peers that run its model)."""
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self._torch_device)


def check_device(device: str) -> str:
    """A ``--device`` of the PyTorch reference, checked for form (``cpu``, ``cuda``, ``cuda:N``)."""
    kind, _, index = str(device).partition(":")
    if device == "cpu" or (kind == "cuda" and (not index or index.isdigit())):
        return str(device)
    raise CamdeployError(f"--device {device!r}: expected cpu, cuda or cuda:N (e.g. cuda:0)")


@contextmanager
def _ieee_fp32() -> Iterator[None]:
    """No TensorFloat-32 in cuDNN convolutions and CUDA matrix products inside the block (the
    ``fp32_precision`` settings of PyTorch 2.9+, else the former ``allow_tf32`` flags)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    settings: list[tuple[Any, str, object]]
    if hasattr(conv, "fp32_precision"):
        settings = [(conv, "fp32_precision", "ieee"),
                    (torch.backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        settings = [(torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(settings, saved, strict=True):
            setattr(owner, name, value)


def _torch_device(device: str) -> Any:
    """``torch.device(device)``, or a clear error when this PyTorch cannot use it."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise CamdeployError(f"--device {device}: PyTorch {torch.__version__} ({build}) sees no CUDA GPU; "
                                 "use --device cpu, or install a CUDA build of torch on a machine with a GPU")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise CamdeployError(f"--device {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s) "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return torch.device(device)
