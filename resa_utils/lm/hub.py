"""Whether the Hugging Face hub can be reached, and what it has already cached (hub ids pass
through unchanged in the `paper` profile)."""

from __future__ import annotations

import os
import socket
import threading

_HUB: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: False at once under `HF_HUB_OFFLINE=1`,
    else one TCP connection attempt bounded by `timeout` seconds (cached)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    if "hub" in _HUB:
        return _HUB["hub"]
    result = {"ok": False}

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS can hang past the socket timeout: never wait longer
    _HUB["hub"] = result["ok"]
    return _HUB["hub"]


def _hub_cached(repo_id: str, filename: str = "config.json") -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except Exception:
        return False
