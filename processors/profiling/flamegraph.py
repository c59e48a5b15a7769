"""A flame graph as one self-contained SVG (no script, no fonts or styles fetched):
for a quick look on a node with no profiling backend.

Every name in it comes from a profiled process (symbols, JIT maps): all text is
escaped, and names are cut to what fits their box.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from xml.sax.saxutils import escape

from otel_ebpf.model import ProfiledStack

WIDTH = 1200
ROW = 17
MARGIN = 10
CHAR_PX = 7.0  # of the 12 px monospace text
MIN_PX = 0.3  # frames narrower than this are left out (their parent shows their time)
KERNEL, JIT = "[kernel]", "[jit]"


class _Node:
    __slots__ = ("children", "module", "value")

    def __init__(self, module: str) -> None:
        self.module = module
        self.value = 0
        self.children: dict[str, _Node] = {}


def _color(name: str, module: str) -> str:
    h = zlib.crc32(name.encode()) % 60
    if module == KERNEL:
        return f"rgb({200 + h // 2},{110 + h},40)"  # orange
    if module == JIT:
        return f"rgb({60 + h},{170 + h // 2},{60 + h // 3})"  # green
    return f"rgb({205 + h // 2},{70 + h * 2},{50 + h // 3})"  # red to yellow


def _tree(stacks: Iterable[ProfiledStack], root_names: bool, off_cpu: bool) -> _Node:
    root = _Node("")
    for s in stacks:
        value = s.off_cpu_ns if off_cpu else s.samples
        if not value:
            continue
        root.value += value
        node = root
        path = [(f"{s.comm} ({s.pid})", "")] if root_names else []
        path += [(f.function, f.module) for f in reversed(s.frames)]
        for name, module in path:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _Node(module)
            child.value += value
            node = child
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def render(
    stacks: list[ProfiledStack], title: str, per_process: bool = True, off_cpu: bool = False
) -> str:
    """The SVG text; `per_process`: one tower per process, named at its foot;
    `off_cpu`: widths are blocked time, not CPU samples."""
    root = _tree(stacks, per_process, off_cpu)
    unit = "ms blocked" if off_cpu else "samples"
    scale_value = 1e-6 if off_cpu else 1.0
    total = max(root.value, 1)
    height = (_depth(root) + 1) * ROW + 3 * MARGIN + 20
    scale = (WIDTH - 2 * MARGIN) / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">',
        '<rect width="100%" height="100%" fill="#f8f8f8"/>',
        f'<text x="{WIDTH // 2}" y="{MARGIN + 12}" text-anchor="middle" font-size="15">'
        f"{escape(title)}</text>",
    ]

    def draw(name: str, node: _Node, x: float, depth: int) -> None:
        w = node.value * scale
        if w < MIN_PX:
            return
        y = height - MARGIN - (depth + 1) * ROW
        share = 100.0 * node.value / total
        tip = f"{name} ({node.module}): {node.value * scale_value:.0f} {unit}, {share:.2f} %"
        out.append(
            f"<g><title>{escape(tip)}</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 1}" '
            f'fill="{_color(name, node.module)}" rx="2"/>'
        )
        fits = int((w - 6) / CHAR_PX)
        if fits >= 3:
            label = name if len(name) <= fits else name[: fits - 2] + ".."
            out.append(f'<text x="{x + 3:.1f}" y="{y + ROW - 5}">{escape(label)}</text>')
        out.append("</g>")
        for child_name, child in sorted(node.children.items()):
            draw(child_name, child, x, depth + 1)
            x += child.value * scale

    draw(f"all ({root.value * scale_value:.0f} {unit})", root, float(MARGIN), 0)
    out.append("</svg>")
    return "\n".join(out)
