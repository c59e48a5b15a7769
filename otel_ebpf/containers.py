"""Which container and pod a process runs in, from its cgroup path.

Container runtimes name a container's cgroup after its 64-hex id, and the
kubelet names a pod's after its UID; both appear in `/proc/PID/cgroup`, in the
cgroup v1 and v2 forms of the systemd and cgroupfs drivers:

    0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    0::/kubepods.slice/kubepods-pod<uid_>.slice/crio-<id>.scope
    4:memory:/kubepods/besteffort/pod<uid>/<id>
    0::/system.slice/docker-<id>.scope      12:pids:/docker/<id>
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

_CONTAINER = re.compile(
    r"(?:^|/)(?:(cri-containerd|crio|docker|libpod)-)?([0-9a-f]{64})(?:\.scope)?$"
)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
}


class ContainerRef(NamedTuple):
    container_id: str
    pod_uid: str | None  # None outside Kubernetes
    runtime: str | None  # containerd, cri-o, docker, podman (None: the path does not say)
    cgroup: str  # the container's cgroup path (its parent is the pod's)


def from_cgroup(text: str) -> ContainerRef | None:
    """The container named by a /proc/PID/cgroup text (the v2 line first)."""
    lines = text.splitlines()
    lines.sort(key=lambda line: not line.startswith("0::"))
    for line in lines:
        path = line.split(":", 2)[-1]
        found = _CONTAINER.search(path)
        if found is None:
            continue
        prefix, container_id = found.groups()
        runtime = _RUNTIMES.get(prefix or "")
        if runtime is None and "/docker/" in path:
            runtime = "docker"
        pod = _POD.search(path)
        pod_uid = pod.group(1).replace("_", "-") if pod else None
        return ContainerRef(container_id, pod_uid, runtime, path)
    return None


def of_pid(pid: int, proc: str = "/proc") -> ContainerRef | None:
    try:
        with open(f"{proc}/{pid}/cgroup") as f:
            return from_cgroup(f.read())
    except OSError:  # gone, or not ours to read
        return None


class PodScope:
    """A sidecar's view: only processes in one network namespace (a pod shares one)
    and, if given, under one cgroup path (the pod's). Unknown or gone: outside."""

    def __init__(self, network_namespace: str = "", cgroup: str = "", proc: str = "/proc") -> None:
        self._netns = os.stat(network_namespace).st_ino if network_namespace else None
        self._cgroup = cgroup.rstrip("/")
        self._proc = proc

    def __call__(self, pid: int) -> bool:
        if pid <= 0:
            return False
        try:
            if (
                self._netns is not None
                and os.stat(f"{self._proc}/{pid}/ns/net").st_ino != self._netns
            ):
                return False
            if self._cgroup:
                with open(f"{self._proc}/{pid}/cgroup") as f:
                    paths = [line.split(":", 2)[-1] for line in f.read().splitlines()]
                return any(p == self._cgroup or p.startswith(self._cgroup + "/") for p in paths)
        except OSError:
            return False
        return True
