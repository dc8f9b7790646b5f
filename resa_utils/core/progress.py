"""Progress bars that suit where the code runs: widgets in JupyterLab, plain text in a terminal
and under the runner (which sets RESA_PROGRESS=text so it can mirror the bars)."""

from __future__ import annotations

import os

PROGRESS_ENV = "RESA_PROGRESS"
PROGRESS_INTERVAL_S = 2.0
"""Seconds between progress-bar refreshes: notebooks keep every refresh in their outputs."""

if os.environ.get(PROGRESS_ENV) == "text":
    from tqdm.std import tqdm
else:
    from tqdm.auto import tqdm

__all__ = ["PROGRESS_INTERVAL_S", "tqdm"]
