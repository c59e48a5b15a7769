"""The collector's scheduling priority: below the programs it traces."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def set_priority(nice: int) -> None:
    """Every thread of this process to `nice` (Linux keeps it per thread, and a
    new thread takes its creator's). A refusal (a raise without CAP_SYS_NICE)
    is said and the collector runs as it is."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # this thread
    try:
        for tid in threads:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError as exc:
        log.warning("scheduling priority not set to nice %d: %s", nice, exc.strerror)
        return
    log.info("scheduling priority: nice %d (the traced programs preempt the collector)", nice)
