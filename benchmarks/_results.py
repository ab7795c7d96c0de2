"""How every benchmark script hands over its results: printed, and appended to RESULTS.md when asked."""

from __future__ import annotations

import platform


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def publish(text: str, append: str | None) -> None:
    print(text)
    if append:
        with open(append, "a") as f:
            f.write("\n" + text)
        print(f"appended to {append}")
