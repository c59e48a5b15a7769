"""Low-cardinality route templates for RED metrics: `/users/123/orders/9f8e...`
becomes `/users/{id}/orders/{id}`.

Without a framework there is no declared route, so path segments that look
like identifiers (numbers, UUIDs, long hex or base64-ish hashes, dates) are
replaced. The number of distinct templates per service is capped: past the
cap new templates report `/{other}` so a crawler or a path with unexpected
ids never multiplies a dashboard's series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

DEFAULT_ID_PATTERNS = (
    r"\d+",  # 123
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",  # uuid
    r"[0-9a-fA-F]{8,}",  # hashes, object ids
    r"\d{4}-\d{2}-\d{2}(T[\d:.]+Z?)?",  # dates
    r"(?=.*\d)[A-Za-z0-9_-]{16,}",  # long tokens with digits (base64ish ids)
)
OVERFLOW = "/{other}"
MAX_SEGMENTS = 12


class RouteTemplates:
    """Path -> template, with a per-service cap on distinct templates."""

    def __init__(
        self, id_patterns: Iterable[str] = DEFAULT_ID_PATTERNS, max_per_service: int = 100
    ) -> None:
        self._id = re.compile("|".join(f"(?:{p})" for p in id_patterns))
        self._max = max_per_service
        self._seen: dict[str, set[str]] = {}

    def template(self, path: str) -> str:
        segments = path.split("?", 1)[0].split("/")[: MAX_SEGMENTS + 1]
        out = ["{id}" if s and self._id.fullmatch(s) else s for s in segments]
        return "/".join(out) or "/"

    def route(self, service: str, path: str) -> str:
        """The template, or OVERFLOW once the service has `max_per_service` of them."""
        template = self.template(path)
        seen = self._seen.setdefault(service, set())
        if template in seen:
            return template
        if len(seen) >= self._max:
            return OVERFLOW
        seen.add(template)
        return template
