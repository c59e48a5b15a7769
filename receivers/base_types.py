"""Classes the compiled socket receiver uses but cannot hold: mypyc compiles no
class derived from a built-in or C type (`otel_ebpf/native.py`)."""

import ctypes


class ReceiverError(RuntimeError):
    """The receiver cannot start; the message says why in one sentence."""


class RedKey(ctypes.Structure):
    """`struct red_key` as a record carries it."""

    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("status", ctypes.c_uint16),
        ("method", ctypes.c_char * 12),
        ("version", ctypes.c_char),
        ("role", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("tls", ctypes.c_uint8),
        ("path", ctypes.c_char * 64),
        ("host", ctypes.c_char * 64),
        ("peer", ctypes.c_uint8 * 16),
        ("comm", ctypes.c_char * 16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]
