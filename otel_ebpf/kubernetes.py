"""Pod metadata from the Kubernetes API: listed once, then watched; never a call per span.

A node collector watches the pods of its own node (`spec.nodeName`) and every
Service (cluster IPs name the peers of the service graph). Two read-only calls
(list, watch) with the pod's service-account token; a dropped watch resumes from
the last resourceVersion, an expired one relists.

The attribute set is the OpenTelemetry Collector k8sattributes processor's:
k8s.pod.name/uid, k8s.namespace.name, k8s.node.name, the owner workload
(k8s.deployment.name, k8s.replicaset.name, k8s.statefulset.name,
k8s.daemonset.name, k8s.job.name, k8s.cronjob.name), k8s.container.name,
container.image.name/tag. `service.name` follows the OpenTelemetry Kubernetes
conventions: the container's own OTEL_SERVICE_NAME (read by ProcessRegistry) >
the app.kubernetes.io/name label > the owner workload's name > the container name.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from otel_ebpf import containers
from otel_ebpf.containers import ContainerRef

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 300  # the server ends a watch after this; we resume from where it was
RETRY_S = 5.0
_CRONJOB_RUN = re.compile(r"^(.+)-\d{8,}$")


class Pod(NamedTuple):
    uid: str
    name: str
    namespace: str
    node: str
    ip: str
    service_name: str | None  # from the label or the owner: the container's name is last
    attributes: dict[str, str]  # pod-level k8s.* attributes
    containers: dict[str, tuple[str, str]]  # container id -> (name, image)


def _image(image: str) -> tuple[str, str]:
    """ "repo/name:tag" -> ("repo/name", "tag"); digests and missing tags -> "latest"."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, digest or "latest"


def pod_from(obj: Mapping[str, Any]) -> Pod:
    meta = obj.get("metadata", {})
    spec = obj.get("spec", {})
    status = obj.get("status", {})
    labels: dict[str, str] = meta.get("labels") or {}
    attrs = {
        "k8s.pod.name": meta.get("name", ""),
        "k8s.pod.uid": meta.get("uid", ""),
        "k8s.namespace.name": meta.get("namespace", ""),
    }
    if spec.get("nodeName"):
        attrs["k8s.node.name"] = spec["nodeName"]
    owner_name = None
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, owner_name = ref.get("kind", ""), ref.get("name", "")
        if kind == "ReplicaSet":
            attrs["k8s.replicaset.name"] = owner_name
            template_hash = labels.get("pod-template-hash")
            if template_hash and owner_name.endswith(f"-{template_hash}"):
                owner_name = owner_name[: -len(template_hash) - 1]
                attrs["k8s.deployment.name"] = owner_name
        elif kind in ("StatefulSet", "DaemonSet", "Job"):
            attrs[f"k8s.{kind.lower()}.name"] = owner_name
            scheduled = _CRONJOB_RUN.match(owner_name) if kind == "Job" else None
            if scheduled:  # a CronJob names its Jobs <cronjob>-<minutes since epoch>
                owner_name = attrs["k8s.cronjob.name"] = scheduled.group(1)
    containers = {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        container_id = (cs.get("containerID") or "").rpartition("://")[2]
        if container_id:
            containers[container_id] = (cs.get("name", ""), cs.get("image", ""))
    return Pod(
        uid=attrs["k8s.pod.uid"],
        name=attrs["k8s.pod.name"],
        namespace=attrs["k8s.namespace.name"],
        node=spec.get("nodeName", ""),
        ip=status.get("podIP", ""),
        service_name=labels.get("app.kubernetes.io/name") or owner_name,
        attributes=attrs,
        containers=containers,
    )


class KubeMetadata:
    """The pods of this node and the cluster's services, kept current by watches."""

    def __init__(
        self,
        api: str,
        node: str | None = None,
        token_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self._api = api.rstrip("/")
        self._node = node
        self._token_file = token_file
        self._context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._pods: dict[str, Pod] = {}  # uid -> pod
        self._pod_ips: dict[str, Pod] = {}
        self._services: dict[str, str] = {}  # cluster IP -> service name
        self._service_keys: dict[str, str] = {}  # namespace/name -> cluster IP
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], api: str = "", node: str = ""
    ) -> KubeMetadata | None:
        """In a pod: the API server from KUBERNETES_SERVICE_HOST/PORT and the mounted
        service account. `api` overrides (out of cluster, or a test's stub server)."""
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token = SERVICE_ACCOUNT / "token"
        ca = SERVICE_ACCOUNT / "ca.crt"
        if not api:
            if not host or not port:
                return None
            api = f"https://{host}:{port}"
        return cls(
            api,
            node or env.get("K8S_NODE_NAME") or None,
            token if token.exists() else None,
            ca if ca.exists() and api.startswith("https") else None,
        )

    # -- lookups ---------------------------------------------------------------------

    def pod(self, uid: str) -> Pod | None:
        return self._pods.get(uid)

    def name_of_address(self, address: str) -> str | None:
        """The service (or pod's service name) an IP belongs to, for the service graph."""
        service = self._services.get(address)
        if service is not None:
            return service
        pod = self._pod_ips.get(address)
        return pod.service_name or pod.name if pod else None

    def identity(self, ref: ContainerRef) -> tuple[dict[str, str], str | None]:
        """Resource attributes and the Kubernetes service name of one container."""
        pod = self._pods.get(ref.pod_uid or "")
        if pod is None:
            return {}, None
        attrs = dict(pod.attributes)
        name, image = pod.containers.get(ref.container_id, ("", ""))
        if name:
            attrs["k8s.container.name"] = name
        if image:
            attrs["container.image.name"], attrs["container.image.tag"] = _image(image)
        return attrs, pod.service_name or name or None

    # -- watching ------------------------------------------------------------------

    def start(self, ready_timeout_s: float = 10.0) -> None:
        """Initial lists (waited for, up to the timeout), then watches in the background."""
        selector = f"fieldSelector=spec.nodeName%3D{self._node}" if self._node else ""
        for path, apply in (
            (f"/api/v1/pods?{selector}", self._apply_pod),
            ("/api/v1/services?", self._apply_service),
        ):
            listed = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(path, apply, listed), daemon=True, name="k8s-watch"
            )
            thread.start()
            self._threads.append(thread)
            if not listed.wait(ready_timeout_s):
                log.warning("Kubernetes API: %s not listed within %.0f s", path, ready_timeout_s)

    def stop(self) -> None:
        self._stop.set()

    def _run(self, path: str, apply: Any, listed: threading.Event) -> None:
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    body = self._get(path)
                    for item in body.get("items", []):
                        apply("ADDED", item)
                    version = body.get("metadata", {}).get("resourceVersion", "")
                    listed.set()
                for event in self._watch(path, version):
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        version = ""  # 410 Gone: the version expired, list again
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        apply(kind, obj)
            except Exception as exc:  # unreachable, refused, forbidden: retry, say so
                log.warning("Kubernetes API %s: %s; retrying in %.0f s", path, exc, RETRY_S)
                self._stop.wait(RETRY_S)

    def _request(self, path: str, timeout: float) -> Any:
        request = urllib.request.Request(self._api + path)
        if self._token_file is not None:  # re-read: projected tokens rotate
            request.add_header("Authorization", f"Bearer {self._token_file.read_text().strip()}")
        return urllib.request.urlopen(request, timeout=timeout, context=self._context)

    def _get(self, path: str) -> Any:
        with self._request(path, 30) as response:
            return json.load(response)

    def _watch(self, path: str, version: str) -> Iterator[dict[str, Any]]:
        query = f"&watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_S}"
        with self._request(f"{path}{query}&resourceVersion={version}", WATCH_TIMEOUT_S + 30) as r:
            for line in r:
                if self._stop.is_set():
                    return
                if line.strip():
                    yield json.loads(line)

    def _apply_pod(self, kind: str, obj: Mapping[str, Any]) -> None:
        pod = pod_from(obj)
        old = self._pods.pop(pod.uid, None)
        if old is not None and self._pod_ips.get(old.ip) is old:
            del self._pod_ips[old.ip]
        if kind != "DELETED":
            self._pods[pod.uid] = pod
            if pod.ip:
                self._pod_ips[pod.ip] = pod

    def _apply_service(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata", {})
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        old_ip = self._service_keys.pop(key, None)
        if old_ip is not None:
            self._services.pop(old_ip, None)
        ip = (obj.get("spec") or {}).get("clusterIP", "")
        if kind != "DELETED" and ip and ip != "None":
            self._services[ip] = meta.get("name", "")
            self._service_keys[key] = ip


class Identity(NamedTuple):
    attributes: dict[str, str]  # container.*, k8s.*
    service_name: str | None  # the Kubernetes-derived name, if any
    pending: bool  # in a pod the API has not told us about yet: ask again later


class WorkloadIdentity:
    """pid -> container and Kubernetes identity (cgroup path, then the pod cache)."""

    def __init__(self, kube: KubeMetadata | None, proc: str = "/proc") -> None:
        self.kube = kube
        self._proc = proc

    def __call__(self, pid: int) -> Identity:
        ref = containers.of_pid(pid, self._proc)
        if ref is None:
            return Identity({}, None, False)
        attrs = {"container.id": ref.container_id}
        if ref.runtime:
            attrs["container.runtime"] = ref.runtime
        if ref.pod_uid:
            attrs["k8s.pod.uid"] = ref.pod_uid
        if self.kube is None or not ref.pod_uid:
            return Identity(attrs, None, False)
        pod_attrs, service = self.kube.identity(ref)
        return Identity({**attrs, **pod_attrs}, service, not pod_attrs)
