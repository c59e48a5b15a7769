"""C++ and Rust symbol names made readable (`_ZN3foo3barEv` -> `foo::bar()`).

binutils' `c++filt` does the work, in a process of its own: the names come
from whatever binaries run on the node, and a demangler fed a hostile name
(deep nesting) has crashed its host before; here that costs one batch its
readable names, never the collector. One run per profile window, for the
names not seen before; names that do not look mangled never go to it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections import OrderedDict
from collections.abc import Iterable

log = logging.getLogger(__name__)

# Itanium C++ ABI (_Z), Rust v0 (_R); the characters a mangled name is made of
# (nothing else goes down the line-by-line pipe).
_MANGLED = re.compile(r"_[ZR][A-Za-z0-9_.$]{1,4095}")
TIMEOUT_S = 5.0
MAX_CACHED = 1 << 16


def looks_mangled(name: str) -> bool:
    return _MANGLED.fullmatch(name) is not None


class Demangler:
    def __init__(self, tool: str | None = None) -> None:
        self._tool = tool if tool is not None else shutil.which("c++filt")
        self._names: OrderedDict[str, str] = OrderedDict()
        if self._tool is None:
            log.info("c++filt not found (binutils): C++ and Rust function names stay mangled")

    def readable(self, names: Iterable[str]) -> dict[str, str]:
        """The readable name of each mangled one among `names` (others left out)."""
        wanted = {n for n in names if looks_mangled(n)}
        unknown = sorted(n for n in wanted if n not in self._names)
        if unknown:
            for name, shown in zip(unknown, self._run(unknown), strict=True):
                self._names[name] = shown
            while len(self._names) > MAX_CACHED:
                self._names.popitem(last=False)
        return {n: self._names.get(n, n) for n in wanted}

    def _run(self, names: list[str]) -> list[str]:
        """`names` demangled, in order; unchanged where c++filt failed."""
        if self._tool is None:
            return names
        try:
            done = subprocess.run(
                [self._tool],
                input="\n".join(names) + "\n",
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("c++filt failed: %s", exc)
            return names
        shown = done.stdout.split("\n")[: len(names)]
        if done.returncode != 0 or len(shown) != len(names):
            log.debug("c++filt exited %d for %d names", done.returncode, len(names))
            return names
        return [s.strip() or n for s, n in zip(shown, names, strict=True)]
