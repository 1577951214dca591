"""Serving an exported camdeploy graph from other hosts: :mod:`camdeploy.hosts.triton` writes a
Triton Inference Server model repository (``camdeploy triton``).

Nothing here imports a host's own client library at import time: ``tritonclient`` is imported
where a configuration is built, and its absence is a one-line error naming the ``triton`` extra.
"""
