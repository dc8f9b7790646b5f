"""Module-level sweep functions for tests that run `run_sweep` in spawned worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_and_record_pid(config: dict) -> dict:
    """Write this process's pid to `config['dir']/<i>.pid`, then sleep `config['s']` seconds."""
    (Path(config["dir"]) / f"{config['i']}.pid").write_text(str(os.getpid()))
    time.sleep(config["s"])
    return {"pid": os.getpid()}
