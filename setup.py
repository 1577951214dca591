"""The one compiled part of camdeploy: the host box rule in C (camdeploy/native/), on CAMs and from
low-resolution maps.

Everything else is in pyproject.toml. The extension is optional: without a C compiler (or Python's
headers) the install still succeeds, with a warning, and camdeploy.runtime.boxes and .map_boxes
compute the same boxes with OpenCV and NumPy, more slowly (reports name it: `host boxes` in their versions).
"""

import sys

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "camdeploy._boxes",
        sources=["camdeploy/native/module.c", "camdeploy/native/boxes.c"],
        depends=["camdeploy/native/boxes.h"],
        # -fno-wrapv undoes Python's -fwrapv, which keeps GCC from vectorizing the pixel loops as
        # well (measured: about 20 % slower per map); the C code never relies on signed overflow.
        extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-fno-wrapv"],
        optional=True,
    ),
])
