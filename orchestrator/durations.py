"""Durations as people read them, the same in ``plan``'s estimates and ``run``'s progress lines."""

from __future__ import annotations

import math
from typing import Optional


def format_duration(seconds: Optional[float]) -> str:
    """``42s``, ``5m03s``, ``2h07m``; ``?`` for None or a non-finite value."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    whole = max(0, int(round(seconds)))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{(whole % 3600) // 60:02d}m"
