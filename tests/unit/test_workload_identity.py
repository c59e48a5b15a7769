"""Container and pod identity from cgroup paths, and pod metadata from API objects
(pure logic: texts and objects in the forms runtimes and the API server use)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_ebpf.containers import from_cgroup
from otel_ebpf.kubernetes import pod_from

CID = "3f6a7d1c0b9e8f7a6d5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706"
UID = "0b2c1f4e-5a6d-4c3b-9e8f-7a6b5c4d3e2f"
PODS = json.loads((Path(__file__).parents[1] / "kernel" / "k8s" / "pods.json").read_text())


@pytest.mark.parametrize(
    ("text", "runtime", "pod_uid"),
    [
        (  # containerd, systemd driver, cgroup v2
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n",
            "containerd",
            UID,
        ),
        (  # CRI-O, systemd driver, cgroup v2
            f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
            "cri-o",
            UID,
        ),
        (  # cgroupfs driver, cgroup v1 (the v2 line says nothing)
            f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n4:memory:/kubepods/besteffort/pod{UID}/{CID}\n0::/\n",
            None,
            UID,
        ),
        (f"0::/system.slice/docker-{CID}.scope\n", "docker", None),  # Docker, cgroup v2
        (f"11:devices:/docker/{CID}\n0::/\n", "docker", None),  # Docker, cgroup v1
    ],
)
def test_container_and_pod_from_every_cgroup_form(
    text: str, runtime: str | None, pod_uid: str | None
) -> None:
    ref = from_cgroup(text)
    assert ref is not None
    assert (ref.container_id, ref.runtime, ref.pod_uid) == (CID, runtime, pod_uid)


def test_a_process_outside_containers_has_none() -> None:
    assert from_cgroup("0::/user.slice/user-0.slice/session-1.scope\n") is None
    assert from_cgroup("") is None


def test_pod_attributes_owner_and_service_name() -> None:
    web, db, job, bare = (pod_from(item) for item in PODS["items"])
    assert web.attributes["k8s.deployment.name"] == "web"
    assert web.attributes["k8s.replicaset.name"] == "web-7d4b9c8f6d"
    assert web.service_name == "shop-web"  # app.kubernetes.io/name wins over the owner
    assert db.attributes["k8s.statefulset.name"] == "db" and db.service_name == "db"
    assert job.attributes["k8s.cronjob.name"] == "report" and job.service_name == "report"
    assert bare.service_name is None  # no label, no owner: the container's name decides
    name, image = next(iter(web.containers.values()))
    assert (name, image) == ("web", "registry.example/shop/web:1.4.2")
