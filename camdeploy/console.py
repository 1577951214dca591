"""Messages for the user on stderr: one place, so that every warning looks the same and leaves a
progress bar intact."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """``camdeploy: warning: MESSAGE`` on stderr, printed above a running progress bar."""
    from tqdm import tqdm

    tqdm.write(f"camdeploy: warning: {message}", file=sys.stderr)
