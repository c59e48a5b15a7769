"""Compiled eBPF programs kept on disk, so a restart skips the compiler.

bcc compiles C at every start: 1.5-2 s of clang and LLVM, most of the
collector's start-up, and the compiler's pages in its memory. What a compile
leaves is small: each function's instructions and each map's shape. This
module saves them after a compile (`save`) and builds a `bcc.BPF` from them
without compiling (`CachedBPF`): it creates the maps, writes their new
descriptors into the instructions that name them, and loads the programs.
The kernel verifies them again, but a verifier checks safety, not intent (a
program that reads every process's memory is safe): hence the checks below.

The cache is keyed by everything the compile read: the source, the flags, the
running kernel (release and build), its headers and bcc's version; a file for
another key is never looked at. As the collector runs as root and loads what
it reads into the kernel, a file is used only if the collector's own user owns
it and its directory and neither is writable by anyone else; its contents
carry their own digest. Anything wrong: compile, as without a cache.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import platform
import stat
import struct
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

DEFAULT_PROGRAM_CACHE = "/var/cache/otel-ebpf"
FORMAT = 1
KEEP_FILES = 8  # programs of other keys kept (other configurations, kernels)

_BPF_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1
_PSEUDO_MAP_VALUE = 2
_INSN = struct.Struct("<BBhi")


class CacheError(Exception):
    """A compiled program that cannot be saved or used as it is."""


def cache_key(text: str, cflags: list[str]) -> str:
    """What the compiled code depends on, hashed."""
    import bcc

    release = platform.release()
    headers = Path("/lib/modules") / release / "build"
    parts = [
        f"format {FORMAT}",
        text,
        "\0".join(cflags),
        release,
        _read("/proc/sys/kernel/version"),
        str(headers.resolve()) if headers.exists() else "",
        getattr(bcc, "__version__", ""),
    ]
    return hashlib.sha256("\0\0".join(parts).encode()).hexdigest()


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


# ---- instructions: map descriptors in, map indices stored ----


def unlink_maps(code: bytes, index_of_fd: Mapping[int, int]) -> bytes:
    """`code` with each map descriptor replaced by its map's index."""
    return _relink(code, index_of_fd)


def link_maps(code: bytes, fd_of_index: Mapping[int, int]) -> bytes:
    """Stored `code` with each map index replaced by that map's descriptor now."""
    return _relink(code, fd_of_index)


def _relink(code: bytes, new: Mapping[int, int]) -> bytes:
    if len(code) % _INSN.size:
        raise CacheError("instructions are not whole")
    out = bytearray(code)
    at = 0
    while at < len(out):
        op, regs, off, imm = _INSN.unpack_from(out, at)
        if op == _BPF_LD_IMM64:
            source = regs >> 4
            if source in (_PSEUDO_MAP_FD, _PSEUDO_MAP_VALUE):
                if imm not in new:
                    raise CacheError(f"an instruction names an unknown map ({imm})")
                _INSN.pack_into(out, at, op, regs, off, new[imm])
            elif source:
                raise CacheError(f"a 64-bit load of kind {source} cannot be relinked")
            at += 2 * _INSN.size  # the second half holds the upper 32 bits
        else:
            at += _INSN.size
    return bytes(out)


# ---- what a compile leaves ----


class _MapInfo(ctypes.Structure):
    _fields_ = [  # the head of struct bpf_map_info
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


BPF_MAP_TYPE_TASK_STORAGE: Final = 29
_BTF_INT_SIGNED: Final = 1


class _MapCreateOpts(ctypes.Structure):
    _fields_ = [  # libbpf's struct bpf_map_create_opts (1.0)
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


@functools.cache
def _libbpf() -> ctypes.CDLL:
    """libbpf (libbcc's own dependency) for what bcc_create_map cannot make: a map
    the kernel wants described in BTF (task storage)."""
    own = ctypes.CDLL("libbpf.so.1", use_errno=True)
    vp, cp, i, u = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32
    for name, res, args in (
        ("btf__new_empty", vp, []),
        ("btf__add_int", i, [vp, cp, ctypes.c_size_t, i]),
        ("btf__add_array", i, [vp, i, i, u]),
        ("btf__load_into_kernel", i, [vp]),
        ("btf__fd", i, [vp]),
        ("btf__free", None, [vp]),
        ("bpf_map_create", i, [i, cp, u, u, u, ctypes.POINTER(_MapCreateOpts)]),
        ("libbpf_probe_bpf_helper", i, [i, i, vp]),
    ):
        fn = getattr(own, name)
        fn.restype, fn.argtypes = res, args
    return own


_NO_SUCH_HELPER: Final = 0x7FFF


def kernel_has_helper(prog_type: int, helper: int) -> bool:
    """Whether the kernel lets programs of `prog_type` call `helper` (kernel
    numbering, include/uapi/linux/bpf.h), by loading a probe: a release number
    says little where distributions backport. False where it cannot tell: the
    probe says yes to a helper no kernel has where it was not let load at all
    (no privilege), as libbpf reads only a verifier's refusal as a no."""
    try:
        probe = _libbpf().libbpf_probe_bpf_helper
    except (OSError, AttributeError):  # no libbpf 1.x beside libbcc
        return False
    return bool(
        probe(prog_type, helper, None) == 1 and probe(prog_type, _NO_SUCH_HELPER, None) == 0
    )


def create_described_map(kind: int, name: bytes, value_size: int, flags: int) -> int:
    """A map keyed by an int whose value the kernel must see described in BTF
    (task storage): an int key and a byte array of the value's size. Returns its
    fd, or -1 with errno set."""
    lib = _libbpf()
    btf = lib.btf__new_empty()
    if not btf:
        return -1
    try:
        key = lib.btf__add_int(btf, b"int", 4, _BTF_INT_SIGNED)
        byte = lib.btf__add_int(btf, b"unsigned char", 1, 0)
        value = lib.btf__add_array(btf, key, byte, value_size)
        if min(key, byte, value) < 0 or lib.btf__load_into_kernel(btf):
            return -1
        opts = _MapCreateOpts(
            sz=ctypes.sizeof(_MapCreateOpts),
            btf_fd=lib.btf__fd(btf),
            btf_key_type_id=key,
            btf_value_type_id=value,
            map_flags=flags,
        )
        return int(lib.bpf_map_create(kind, name, 4, value_size, 0, ctypes.byref(opts)))
    finally:
        lib.btf__free(btf)  # the map holds the kernel's copy


@functools.cache
def _libbcc() -> ctypes.CDLL:
    """libbcc with the signatures used here (a handle of our own: bcc's is shared)."""
    from bcc.libbcc import lib

    own = ctypes.CDLL(lib._name, use_errno=True)
    vp, size, cp, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int
    for name, res, args in (
        ("bpf_num_tables", size, [vp]),
        ("bpf_table_name", cp, [vp, size]),
        ("bpf_table_fd_id", i, [vp, size]),
        ("bpf_table_key_desc_id", cp, [vp, size]),
        ("bpf_table_leaf_desc_id", cp, [vp, size]),
        ("bpf_num_functions", size, [vp]),
        ("bpf_function_name", cp, [vp, size]),
        ("bpf_function_start", vp, [vp, cp]),
        ("bpf_function_size", size, [vp, cp]),
        ("bpf_module_license", cp, [vp]),
        ("bpf_module_kern_version", ctypes.c_uint, [vp]),
        ("bpf_obj_get_info", i, [i, vp, ctypes.POINTER(ctypes.c_uint32)]),
        ("bcc_create_map", i, [i, cp, i, i, i, i]),
        ("bcc_prog_load", i, [i, cp, cp, i, cp, ctypes.c_uint, i, cp, ctypes.c_uint]),
    ):
        fn = getattr(own, name)
        fn.restype, fn.argtypes = res, args
    return own


def image_of(bpf: Any) -> dict[str, Any]:
    """What `bpf`'s compile left, to be stored: maps and instructions."""
    lib = _libbcc()
    module = bpf.module
    maps: list[dict[str, Any]] = []
    index_of_fd: dict[int, int] = {}
    for table in range(lib.bpf_num_tables(module)):
        fd = lib.bpf_table_fd_id(module, table)
        info = _MapInfo()
        length = ctypes.c_uint32(ctypes.sizeof(info))
        if fd < 0 or lib.bpf_obj_get_info(fd, ctypes.byref(info), ctypes.byref(length)):
            raise CacheError(f"map {table} cannot be described")
        index_of_fd[fd] = len(maps)
        maps.append(
            {
                "name": lib.bpf_table_name(module, table).decode(),
                "type": info.type,
                "key_size": info.key_size,
                "value_size": info.value_size,
                "max_entries": info.max_entries,
                "flags": info.map_flags,
                "key_desc": (lib.bpf_table_key_desc_id(module, table) or b"").decode(),
                "leaf_desc": (lib.bpf_table_leaf_desc_id(module, table) or b"").decode(),
            }
        )
    functions = {}
    for number in range(lib.bpf_num_functions(module)):
        name = lib.bpf_function_name(module, number)
        code = ctypes.string_at(
            lib.bpf_function_start(module, name), lib.bpf_function_size(module, name)
        )
        functions[name.decode()] = base64.b64encode(unlink_maps(code, index_of_fd)).decode()
    return {
        "format": FORMAT,
        "license": lib.bpf_module_license(module).decode(),
        "kern_version": lib.bpf_module_kern_version(module),
        "maps": maps,
        "functions": functions,
    }


# ---- on disk ----


def _path(directory: str, key: str) -> Path:
    return Path(directory) / f"program-{key[:32]}.json"


def save(directory: str, key: str, image: dict[str, Any]) -> None:
    """Written whole or not at all (a rename), readable by its owner only."""
    root = Path(directory)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owned(root)
    body = json.dumps({"key": key, "image": image}, sort_keys=True)
    document = json.dumps({"digest": hashlib.sha256(body.encode()).hexdigest(), "body": body})
    fd, temporary = tempfile.mkstemp(dir=root, prefix=".program-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(document)
        os.replace(temporary, _path(directory, key))
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _prune(root)


def load(directory: str, key: str) -> dict[str, Any] | None:
    """The image stored for `key`; None if there is none. Raises CacheError for
    one that cannot be trusted or read (the caller compiles, and says why)."""
    path = _path(directory, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{path}: {exc.strerror}") from exc
    with os.fdopen(fd) as stored:
        _check_owned(Path(directory))
        _check_owned(path, os.fstat(stored.fileno()))
        text = stored.read()
    try:
        document = json.loads(text)
        body = document["body"]
        if hashlib.sha256(body.encode()).hexdigest() != document["digest"]:
            raise CacheError(f"{path}: its digest does not match its contents")
        stored_body = json.loads(body)
        image = stored_body["image"]
        if stored_body["key"] != key or image["format"] != FORMAT:
            raise CacheError(f"{path}: made for another program")
        return image  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{path}: unreadable ({exc})") from exc


def forget(directory: str, key: str) -> None:
    _path(directory, key).unlink(missing_ok=True)


def directory_problem(directory: str) -> str | None:
    """Why programs could not be kept in `directory` (None: they can)."""
    root = Path(directory)
    if not root.exists():
        parent = next((p for p in root.parents if p.exists()), Path("/"))
        writable = os.access(parent, os.W_OK)
        return None if writable else f"{parent} is not writable, so {root} cannot be made"
    try:
        _check_owned(root)
    except CacheError as exc:
        return str(exc)
    return None if os.access(root, os.W_OK) else f"{root} is not writable"


def kept(directory: str) -> int:
    """How many compiled programs `directory` holds."""
    return len(list(Path(directory).glob("program-*.json")))


def _check_owned(path: Path, st: os.stat_result | None = None) -> None:
    st = st or os.stat(path, follow_symlinks=False)
    if st.st_uid != os.geteuid():
        raise CacheError(f"{path} is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"{path} is writable by others than its owner")


def _prune(root: Path) -> None:
    """Keep the newest KEEP_FILES programs (configurations change, kernels too)."""
    files = sorted(root.glob("program-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP_FILES:]:
        old.unlink(missing_ok=True)


# ---- a bcc.BPF made from an image ----


@functools.cache  # one class, so that isinstance can tell its objects
def _cached_bpf_class() -> type[Any]:
    from bcc import BPF
    from bcc import table as tables

    classes = {
        tables.BPF_MAP_TYPE_HASH: tables.HashTable,
        tables.BPF_MAP_TYPE_ARRAY: tables.Array,
        tables.BPF_MAP_TYPE_PROG_ARRAY: tables.ProgArray,
        tables.BPF_MAP_TYPE_PERCPU_HASH: tables.PerCpuHash,
        tables.BPF_MAP_TYPE_PERCPU_ARRAY: tables.PerCpuArray,
        tables.BPF_MAP_TYPE_LRU_HASH: tables.LruHash,
        tables.BPF_MAP_TYPE_LRU_PERCPU_HASH: tables.LruPerCpuHash,
        tables.BPF_MAP_TYPE_RINGBUF: tables.RingBuf,
    }

    class CachedBPF(BPF):  # type: ignore[misc, valid-type]
        """A `bcc.BPF` whose maps and programs come from an image, not a compile.
        bcc's attach, detach and cleanup work on descriptors and are used as is;
        what reads the compiled module (functions, tables) reads the image."""

        def __init__(self, image: dict[str, Any], before_attach: Callable[[Any], None]) -> None:
            # what BPF.__init__ sets up, but the compile
            self.kprobe_fds: dict[Any, Any] = {}
            self.uprobe_fds: dict[Any, Any] = {}
            self.tracepoint_fds: dict[Any, Any] = {}
            self.raw_tracepoint_fds: dict[Any, Any] = {}
            self.kfunc_entry_fds: dict[Any, Any] = {}
            self.kfunc_exit_fds: dict[Any, Any] = {}
            self.lsm_fds: dict[Any, Any] = {}
            self.perf_buffers: dict[Any, Any] = {}
            self.open_perf_events: dict[Any, Any] = {}
            self._ringbuf_manager = None
            self.tracefile = None
            self.debug = 0
            self.funcs: dict[bytes, Any] = {}
            self.tables: dict[Any, Any] = {}
            self.module = None
            self._lib = _libbcc()
            self._image = image
            self._map_fds: list[int] = []
            self._fd_of_index: dict[int, int] = {}
            self._maps = {m["name"]: i for i, m in enumerate(image["maps"])}
            try:
                for index, m in enumerate(image["maps"]):
                    if m["type"] == BPF_MAP_TYPE_TASK_STORAGE:
                        fd = create_described_map(
                            m["type"], m["name"][:15].encode(), m["value_size"], m["flags"]
                        )
                    else:
                        fd = self._lib.bcc_create_map(
                            m["type"],
                            m["name"][:15].encode(),
                            m["key_size"],
                            m["value_size"],
                            m["max_entries"],
                            m["flags"],
                        )
                    if fd < 0:
                        err = ctypes.get_errno()
                        raise CacheError(f"map {m['name']}: {os.strerror(err)}")
                    self._map_fds.append(fd)
                    self._fd_of_index[index] = fd
                before_attach(self)
                self._trace_autoload()
            except BaseException:
                self.cleanup()
                raise
            atexit.register(self.cleanup)

        def load_func(
            self, func_name: Any, prog_type: int, device: Any = None, attach_type: int = -1
        ) -> Any:
            name = func_name if isinstance(func_name, bytes) else func_name.encode()
            if name in self.funcs:
                return self.funcs[name]
            stored = self._image["functions"].get(name.decode())
            if stored is None:
                raise Exception(f"Unknown program {name.decode()}")
            code = link_maps(base64.b64decode(stored), self._fd_of_index)
            log_buf = ctypes.create_string_buffer(1 << 16)
            fd = self._lib.bcc_prog_load(
                prog_type,
                name,
                code,
                len(code),
                self._image["license"].encode(),
                self._image["kern_version"],
                0,
                log_buf,
                len(log_buf),
            )
            if fd < 0:
                err = ctypes.get_errno()
                if err == errno.EPERM:
                    raise Exception("Need super-user privileges to run")
                last = log_buf.value.decode(errors="replace").strip().splitlines()[-1:]
                raise Exception(
                    f"Failed to load BPF program {name.decode()}: {os.strerror(err)} {last}"
                )
            fn = BPF.Function(self, name, fd)
            self.funcs[name] = fn
            return fn

        def get_table(
            self, name: Any, keytype: Any = None, leaftype: Any = None, reducer: Any = None
        ) -> Any:
            text = name.decode() if isinstance(name, bytes) else name
            index = self._maps.get(text)
            if index is None:
                raise KeyError(text)
            m = self._image["maps"][index]
            cls = classes.get(m["type"])
            if cls is None:
                raise CacheError(f"map {text} is of a type not handled here ({m['type']})")
            key = keytype or (
                BPF._decode_table_type(json.loads(m["key_desc"])) if m["key_desc"] else None
            )
            leaf = leaftype or (
                BPF._decode_table_type(json.loads(m["leaf_desc"])) if m["leaf_desc"] else None
            )
            kwargs = (
                {"reducer": reducer}
                if cls in (tables.PerCpuHash, tables.PerCpuArray, tables.LruPerCpuHash)
                else {}
            )
            if cls is tables.RingBuf:
                table = cls(self, index, self._fd_of_index[index], key, leaf, text.encode())
            else:
                table = cls(self, index, self._fd_of_index[index], key, leaf, **kwargs)
            # TableBase read these from the compiled module
            table.ttype, table.flags = m["type"], m["flags"]
            table.max_entries = m["max_entries"]
            return table

        def load_together(self, programs: list[tuple[str, int]]) -> None:
            """Load these programs on as many threads as this process has CPUs:
            the kernel verifies each in the thread that loads it, and the ctypes
            call lets the GIL go. It matters where the programs' loops are
            bounded ones (before Linux 6.9: one by one, the three counters' six
            took 2 s of a 3.5 s start here); with may_goto loops all of them
            verify in 0.2 s one by one. A refusal is not raised: `load_func`
            meets it again, one program at a time, when that one is asked for."""
            wanted = [(name, kind) for name, kind in programs if name.encode() not in self.funcs]
            workers = min(len(wanted), len(os.sched_getaffinity(0)))
            if workers < 2:
                return

            def load(program: tuple[str, int]) -> None:
                try:
                    self.load_func(*program)
                except Exception:  # bcc's bare Exception: raised when asked again
                    return

            with ThreadPoolExecutor(workers, thread_name_prefix="bpf-load") as pool:
                list(pool.map(load, wanted))

        def _trace_autoload(self) -> None:
            self.load_together(
                [
                    (name, BPF.TRACEPOINT)
                    for name in self._image["functions"]
                    if name.startswith("tracepoint__")
                ]
            )
            for name in self._image["functions"]:
                if name.startswith("tracepoint__"):
                    fn = self.load_func(name, BPF.TRACEPOINT)
                    tp = fn.name[len(b"tracepoint__") :].replace(b"__", b":")
                    self.attach_tracepoint(tp=tp, fn_name=fn.name)
                elif name.startswith(("kprobe__", "kretprobe__", "raw_tracepoint__")):
                    raise CacheError(f"{name}: not a kind of program loaded from a cache")

        def cleanup(self) -> None:
            super().cleanup()
            fds, self._map_fds = self._map_fds, []
            for fd in fds:
                os.close(fd)

    return CachedBPF


def load_together(bpf: Any, programs: list[tuple[str, int]]) -> None:
    """Load these programs at once where `bpf` came from the cache (above). A
    compile's `bcc.BPF` loads each when asked: its module is not known to be
    safe to share between threads."""
    if isinstance(bpf, _cached_bpf_class()):
        bpf.load_together(programs)


def compile_or_load(
    text: str,
    cflags: list[str],
    directory: str,
    before_attach: Callable[[Any], None],
) -> Any:
    """`bcc.BPF(text=text, cflags=cflags)`, from `directory`'s copy when there is a
    usable one, compiled (and stored there) when not; no cache if `directory` is
    empty. `before_attach` prepares the maps: for a compile, right after it
    (bcc attaches the tracepoint programs as it compiles), for a copy before
    its programs are attached."""
    from bcc import BPF

    key = cache_key(text, cflags) if directory else ""
    started = time.monotonic()
    if directory:
        try:
            image = load(directory, key)
        except (CacheError, OSError) as exc:
            log.warning("compiled program cache not used: %s", exc)
            image = None
        if image is not None:
            try:
                bpf = _cached_bpf_class()(image, before_attach)
                log.info(
                    "eBPF programs loaded from %s in %.1f s (no compile)",
                    directory,
                    time.monotonic() - started,
                )
                return bpf
            except Exception as exc:  # a kernel that refuses them: compile anew
                log.warning("compiled programs in %s not loaded (%s): compiling", directory, exc)
                forget(directory, key)
    # the wait people see at a node's first start, or after an upgrade
    log.info("compiling and loading the eBPF programs (a few seconds)")
    bpf = BPF(text=text, cflags=cflags)
    before_attach(bpf)
    log.info("eBPF programs compiled and loaded in %.1f s", time.monotonic() - started)
    if directory:
        try:
            save(directory, key, image_of(bpf))
            log.info("compiled eBPF programs kept in %s for the next start", directory)
        except (CacheError, OSError) as exc:
            log.warning("compiled programs not kept in %s: %s", directory, exc)
    return bpf
