"""What this CPU can do, as far as the choice of INT8 kernels depends on it.

ONNX Runtime's x86-64 INT8 kernels multiply uint8 activations by int8 weights (U8S8). With
AVX512-VNNI the products are summed straight into 32 bits, exactly. Without VNNI (AVX2, or AVX512
without VNNI) the kernels use ``VPMADDUBSW``, which adds each *pair* of products into a saturating
16-bit integer: ``255 * 127 * 2`` does not fit, so a layer whose weights use the full int8 range can
silently clip (ONNX Runtime's documentation warns about it; see :mod:`camdeploy.runtime.int8`).

The features are read the way ONNX Runtime's kernel dispatch reads them: from the ``CPUID``
instruction, through NumPy's own runtime detection (``CPUID`` and the operating system's support of
the registers), never from ``/proc/cpuinfo``, which an emulator such as ``qemu-x86_64 -cpu
Haswell`` does not rewrite. The 256-bit AVX-VNNI of some client CPUs is not reported by NumPy;
such a CPU counts as one without VNNI, which only costs speed (the exact U8U8 kernels are used).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set facts that decide how INT8 runs; ``x86_64`` False on ARM and others."""

    x86_64: bool
    avx2: bool = False
    avx512f: bool = False
    avx512_vnni: bool = False

    @property
    def u8s8_saturates(self) -> bool:
        """Whether ONNX Runtime's U8S8 kernels may saturate here: x86-64 without VNNI."""
        return self.x86_64 and not self.avx512_vnni

    @property
    def isa(self) -> str:
        """The widest vector ISA, named as in reports: ``avx512_vnni``, ``avx512f``, ``avx2``, ..."""
        if not self.x86_64:
            return platform.machine() or "unknown"
        for name in ("avx512_vnni", "avx512f", "avx2"):
            if getattr(self, name):
                return name
        return "sse"

    def as_dict(self) -> dict[str, object]:
        return {"isa": self.isa, "x86_64": self.x86_64, "avx2": self.avx2, "avx512f": self.avx512f,
                "avx512_vnni": self.avx512_vnni}


@cache
def cpu_features() -> CpuFeatures:
    """This CPU's :class:`CpuFeatures`, from ``CPUID`` as NumPy detected it at import."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return CpuFeatures(x86_64=False)
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as found  # type: ignore[no-redef]
    return CpuFeatures(x86_64=True, avx2=bool(found.get("AVX2")), avx512f=bool(found.get("AVX512F")),
                       avx512_vnni=bool(found.get("AVX512VNNI")))


def cpuinfo_flags() -> list[str]:
    """The flags among avx2, avx512f, avx512_vnni and avx_vnni that ``/proc/cpuinfo`` lists (Linux;
    empty elsewhere): for reports, beside :func:`cpu_features`, never for decisions."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(text.split())
    return [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if flag in words]
