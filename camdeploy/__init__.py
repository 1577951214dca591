"""camdeploy: deploy GAP CNN classifiers with class activation maps and boxes computed in the graph.

The runtime (``camdeploy.runtime``) needs only numpy, onnxruntime and OpenCV; exporting
(``camdeploy.export``) needs the ``export`` extra (torch).
"""

__version__ = "0.3.0"
