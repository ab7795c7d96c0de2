"""The run log: what train and test did, epoch by epoch, appended to RUN_DIR/flowad.log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from flowad import distributed

LOG_FILE = "flowad.log"
# INFO and not propagated: a run's lines go to its own file, never into the host application's logging
logger = logging.getLogger("flowad.run")
logger.setLevel(logging.INFO)
logger.propagate = False


@contextlib.contextmanager
def log_to(run_dir: str | Path) -> Iterator[None]:
    """Append flowad's log lines to RUN_DIR/flowad.log while the block runs (from the main process)."""
    if not distributed.is_main():
        yield
        return
    handler = logging.FileHandler(Path(run_dir) / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    try:
        yield
    except Exception as err:
        logger.error("stopped: %s", err)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()
