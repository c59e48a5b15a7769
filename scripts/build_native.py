"""Compile the event path's modules (otel_ebpf/native.py HOT_PATH) with mypyc.

Run by setup with the virtual environment's Python (mypy, which ships mypyc, is
among the test extras; gcc and the Python headers among the Debian packages).
Builds in a scratch copy of the package laid out as it installs, then puts the
extensions and a manifest in otel_ebpf/_native/, where the import hook finds
them. Nothing to do when the manifest matches the sources; a failed build
leaves the collector in Python, said, and exits 1.

    .venv/bin/python scripts/build_native.py [--force]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ["OTEL_EBPF_NATIVE"] = "0"  # this process imports the sources, never a build

from otel_ebpf import native

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


def stage(directories: list[Path], into: Path) -> None:
    """The package as it installs (receivers/, processors/, bpf/ inside otel_ebpf/),
    copied: mypyc names modules by their place and writes beside them."""
    top = into / "otel_ebpf"
    for directory in directories:  # otel_ebpf's own first, then its subpackages
        shutil.copytree(
            directory,
            top if directory == directories[0] else top / directory.name,
            ignore=shutil.ignore_patterns("__pycache__", "_native", "*.so", "*.c"),
            dirs_exist_ok=True,
        )


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """The compiler's chatter (its own and gcc's, at the descriptors) to a log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def build(digest: str) -> int:
    from mypyc.build import mypycify  # the test extras' mypy
    from setuptools import setup

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="otel-ebpf-native-") as scratch:
        work = Path(scratch)
        stage(native.package_directories(), work)
        (work / "otel_ebpf" / "_native").mkdir()  # where the group's library goes
        sources = [str(Path(*name.split(".")).with_suffix(".py")) for name in native.HOT_PATH]
        options = ["--config-file", str(ROOT / "pyproject.toml")]
        previous = Path.cwd()
        os.chdir(work)
        try:
            with _output_to(work / "build.log"):
                extensions = mypycify(options + sources, group_name=native.GROUP)
                setup(
                    name="otel-ebpf-native",
                    ext_modules=extensions,
                    script_args=["build_ext", "--inplace", "--parallel", "2"],
                )
        except (SystemExit, Exception) as exc:  # setuptools exits on a compiler error
            tail = (work / "build.log").read_text(errors="replace").splitlines()[-15:]
            say(f"compiling the event path failed ({exc}); it runs as Python:")
            print("\n".join(tail), file=sys.stderr)
            return 1
        finally:
            os.chdir(previous)
        if native.source_digest() != digest:  # edited meanwhile: the build is of neither
            say("sources changed while compiling: run setup again; the event path runs as Python")
            return 1
        suffix = native.interpreter_tag()
        fresh = native.NATIVE_DIR.with_name("_native.new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        modules = {}
        for name in native.HOT_PATH:
            built = work / (str(Path(*name.split("."))) + suffix)
            modules[name] = name + suffix
            shutil.copy2(built, fresh / modules[name])
        group = work / (str(Path(*(native.GROUP + "__mypyc").split("."))) + suffix)
        shutil.copy2(group, fresh / group.name)  # imported by name from otel_ebpf._native
        manifest = {"digest": digest, "interpreter": suffix, "modules": modules}
        (fresh / native.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.rmtree(native.NATIVE_DIR, ignore_errors=True)
    fresh.rename(native.NATIVE_DIR)
    say(
        f"compiled the event path with mypyc ({len(modules)} modules) in"
        f" {time.monotonic() - started:.0f} s: {native.NATIVE_DIR}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    args = parser.parse_args()
    digest = native.source_digest()
    manifest = native.read_manifest()
    if manifest is not None and not native.stale(manifest, digest) and not args.force:
        say("compiled event path up to date")
        return 0
    say(
        f"compiling the event path with mypyc ({len(native.HOT_PATH)} modules;"
        " about a minute on 2 cores)"
    )
    return build(digest)


if __name__ == "__main__":
    sys.exit(main())
