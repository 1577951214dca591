"""What an exported camdeploy graph says about itself, in its ONNX ``metadata_props``.

Every key is a string; lists are JSON. A host (C++, Triton, ...) needs nothing else to prepare
inputs and read outputs:

=============================  =================================================================
key                            value
=============================  =================================================================
``camdeploy.version``          camdeploy version that wrote the file
``camdeploy.source_model``     the model it was exported from (built-in name or module:callable)
``camdeploy.class_names``      JSON list of K class names, index = class index
``camdeploy.input_height``     input height S_h in pixels (``images`` is ``[N, 3, S_h, S_w]``)
``camdeploy.input_width``      input width S_w in pixels
``camdeploy.color_order``      ``RGB``: channel 0 of ``images`` is red
``camdeploy.layout``           ``NCHW``
``camdeploy.pixel_scale``      JSON list of 3 floats (one per channel, in colour order)
``camdeploy.pixel_offset``     JSON list of 3 floats
``camdeploy.normalization``    the formula in words: ``x = pixel * scale + offset``, pixel in 0..255
``camdeploy.resize``           default resize mode of the preprocessing: ``stretch`` or ``crop``
``camdeploy.topk``             T, the number of classes whose CAMs the graph returns
``camdeploy.box_threshold``    tau: a box covers the largest 8-connected region with cam >= tau * max
``camdeploy.pooling``          ``avg`` (GAP) or ``max`` (GMP) global pooling of the source model
``camdeploy.precision``        ``int8`` or ``fp16`` in variants written by ``calibrate`` / ``convert``
``camdeploy.int8_target``      INT8 only: ``tensorrt`` (run as simulated int8 on a CPU) or ``cpu``
``camdeploy.int8_weight_bits`` INT8 only: ``8``, or ``7`` (exact with U8S8 kernels without VNNI)
=============================  =================================================================

How a host runs an INT8 file on ONNX Runtime's CPU provider (:mod:`camdeploy.runtime.int8`):
``tensorrt`` target: session option ``session.disable_quant_qdq = 1``; ``cpu`` target with 8-bit
weights on an x86-64 CPU without AVX512-VNNI: ``session.x64quantprecision = 1``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from camdeploy.errors import CamdeployError

PREFIX = "camdeploy."
RESIZE_MODES = ("stretch", "crop")


@dataclass(frozen=True)
class Normalization:
    """Per-channel affine map from 0..255 pixels (in colour order) to the model's input values."""

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    @classmethod
    def from_mean_std(cls, mean: tuple[float, float, float], std: tuple[float, float, float]
                      ) -> Normalization:
        """torchvision convention: pixels scaled to [0, 1], then ``(x - mean) / std``."""
        for value in std:
            if value <= 0:
                raise CamdeployError(f"--std {','.join(map(str, std))}: every value must be > 0")
        return cls(
            tuple(1.0 / (255.0 * s) for s in std),  # type: ignore[arg-type]
            tuple(-m / s for m, s in zip(mean, std, strict=True)),  # type: ignore[arg-type]
        )

    def describe(self) -> str:
        scale = ",".join(f"{v:.9g}" for v in self.scale)
        offset = ",".join(f"{v:.9g}" for v in self.offset)
        return f"x = pixel * scale + offset per channel; pixel in 0..255; scale=[{scale}]; offset=[{offset}]"


# EfficientNet-Lite's own preprocessing: (pixel - 127) / 128.
LITE_NORMALIZATION = Normalization((1 / 128,) * 3, (-127 / 128,) * 3)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ModelSpec:
    """Everything a runner needs to feed an exported graph and interpret its outputs."""

    class_names: tuple[str, ...]
    input_height: int
    input_width: int
    normalization: Normalization
    topk: int
    box_threshold: float
    source_model: str
    pooling: str = "avg"
    resize: str = "stretch"
    color_order: str = "RGB"
    layout: str = "NCHW"
    camdeploy_version: str = ""

    def to_props(self) -> dict[str, str]:
        props = {
            "version": self.camdeploy_version,
            "source_model": self.source_model,
            "class_names": json.dumps(list(self.class_names)),
            "input_height": str(self.input_height),
            "input_width": str(self.input_width),
            "color_order": self.color_order,
            "layout": self.layout,
            "pixel_scale": json.dumps(list(self.normalization.scale)),
            "pixel_offset": json.dumps(list(self.normalization.offset)),
            "normalization": self.normalization.describe(),
            "resize": self.resize,
            "topk": str(self.topk),
            "box_threshold": repr(self.box_threshold),
            "pooling": self.pooling,
        }
        return {PREFIX + key: value for key, value in props.items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "the model") -> ModelSpec:
        """Parse ``metadata_props``; a missing or malformed key names the file and the key."""

        def get(key: str) -> str:
            try:
                return props[PREFIX + key]
            except KeyError:
                raise CamdeployError(
                    f"{source}: metadata key {PREFIX + key!r} is missing; was it exported by "
                    "`camdeploy export`? Re-export it to add the CAM metadata"
                ) from None

        try:
            spec = cls(
                class_names=tuple(json.loads(get("class_names"))),
                input_height=int(get("input_height")),
                input_width=int(get("input_width")),
                normalization=Normalization(
                    tuple(float(v) for v in json.loads(get("pixel_scale"))),  # type: ignore[arg-type]
                    tuple(float(v) for v in json.loads(get("pixel_offset"))),  # type: ignore[arg-type]
                ),
                topk=int(get("topk")),
                box_threshold=float(get("box_threshold")),
                source_model=get("source_model"),
                pooling=get("pooling"),
                resize=get("resize"),
                color_order=get("color_order"),
                layout=get("layout"),
                camdeploy_version=get("version"),
            )
        except (ValueError, TypeError) as exc:
            raise CamdeployError(f"{source}: malformed camdeploy metadata ({exc})") from exc
        if spec.color_order != "RGB" or spec.layout != "NCHW":
            raise CamdeployError(
                f"{source}: colour order {spec.color_order!r} and layout {spec.layout!r} are not "
                "supported; expected RGB and NCHW"
            )
        return spec


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """Read the :class:`ModelSpec` of an exported ``.onnx`` file without loading external weights."""
    from camdeploy.graph import load

    model = load(path, weights=False)
    return ModelSpec.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))
