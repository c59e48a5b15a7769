"""A file descriptor that wakes a reader when the wall clock is set: a timerfd
on CLOCK_REALTIME with TFD_TIMER_CANCEL_ON_SET (timerfd_create(2)), through
ctypes (os.timerfd_create is Python 3.13's). Apart from wall_clock.py, which
is compiled with the event path: mypyc does not build ctypes structures."""

from __future__ import annotations

import ctypes
import os
from typing import Final


class _TimerSpec(ctypes.Structure):
    _fields_ = [  # struct itimerspec
        ("interval_sec", ctypes.c_long),
        ("interval_nsec", ctypes.c_long),
        ("value_sec", ctypes.c_long),
        ("value_nsec", ctypes.c_long),
    ]


_CLOCK_REALTIME: Final = 0
_TFD_CLOEXEC: Final = 0o2000000
_TFD_TIMER_ABSTIME: Final = 1
_TFD_TIMER_CANCEL_ON_SET: Final = 2


def clock_set_timer() -> int:
    """A timerfd on the wall clock, due in a far future, whose read fails with
    ECANCELED when the clock is set (timerfd_create(2)); -1 where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.timerfd_create(_CLOCK_REALTIME, _TFD_CLOEXEC))
    except (OSError, AttributeError):
        return -1
    if fd < 0:
        return -1
    far = _TimerSpec(0, 0, 1 << 40, 0)  # some 35,000 years on
    if libc.timerfd_settime(
        fd, _TFD_TIMER_ABSTIME | _TFD_TIMER_CANCEL_ON_SET, ctypes.byref(far), None
    ):
        os.close(fd)
        return -1
    return fd
