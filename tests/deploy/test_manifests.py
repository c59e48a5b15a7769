"""deploy/: the Helm chart lints and renders for every values set, every rendered and
plain manifest validates against the Kubernetes OpenAPI schemas (kubernetes-validate,
offline), the plain manifests are the chart's rendering, and bad values are refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "otel-ebpf"
VALUES = [None, *sorted((ROOT / "deploy" / "helm" / "examples").glob("*.yaml"))]
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest and newest the project supports
VALIDATE = Path(sys.executable).with_name("kubernetes-validate")


def helm() -> Path:
    found = sorted((ROOT / ".cache" / "helm").glob("helm-v*"))
    if not found:
        subprocess.run(["bash", str(ROOT / "scripts" / "build-helm.sh")], check=True)
        found = sorted((ROOT / ".cache" / "helm").glob("helm-v*"))
    return found[-1]


def values_args(values: Path | None) -> list[str]:
    return ["-f", str(values)] if values else []


def validate(manifest: Path) -> None:
    for version in KUBERNETES_VERSIONS:
        out = subprocess.run(
            [str(VALIDATE), "--strict", "--quiet", "-k", version, str(manifest)],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, f"{manifest.name} against {version}:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("values", VALUES, ids=lambda v: v.stem if v else "default")
def test_chart_lints_renders_and_validates(values: Path | None, tmp_path: Path) -> None:
    lint = subprocess.run(
        [str(helm()), "lint", "--strict", str(CHART), *values_args(values)],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(
        subprocess.run(
            [str(helm()), "template", "t", str(CHART), *values_args(values)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.read_text()) if doc}
    assert ("Deployment" if values and "sidecar" in values.stem else "DaemonSet") in kinds
    validate(rendered)


@pytest.mark.parametrize(
    "manifest", sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")), ids=lambda p: p.name
)
def test_plain_manifests_validate_and_match_the_chart(manifest: Path, tmp_path: Path) -> None:
    validate(manifest)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "render-manifests.sh"), str(tmp_path)], check=True
    )
    assert (tmp_path / manifest.name).read_text() == manifest.read_text(), (
        f"{manifest.name} is stale: run scripts/render-manifests.sh"
    )


def test_the_daemonset_asks_for_capabilities_not_privileged(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "otel-ebpf.yaml").read_text()))
    (ds,) = [d for d in docs if d and d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert "privileged" not in security and security["capabilities"]["drop"] == ["ALL"]
    assert set(security["capabilities"]["add"]) == {
        "BPF",
        "PERFMON",
        "SYS_RESOURCE",
        "SYS_PTRACE",
        "DAC_READ_SEARCH",
    }
    assert pod["hostPID"] is True
    assert {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v} == {
        "/sys/kernel/tracing",
        "/lib/modules",
        "/usr/src",
        "/var/cache/otel-ebpf",  # compiled programs, kept across restarts
    }


def test_a_broken_values_file_is_refused() -> None:
    out = subprocess.run(
        [
            str(helm()),
            "template",
            "t",
            str(CHART),
            "-f",
            str(Path(__file__).with_name("broken-values.yaml")),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    for problem in ("/mode", "/otlp/endpoint", "'resource' not allowed"):
        assert problem in out.stderr


def test_the_schema_check_catches_a_broken_manifest(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "kubernetes" / "otel-ebpf.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("hostPID: true", "hostPid: true"))  # a misspelt field
    with pytest.raises(AssertionError, match="hostPid"):
        validate(broken)


@pytest.mark.parametrize(
    "config", sorted((ROOT / "deploy" / "examples").glob("gateway-*.yaml")), ids=lambda p: p.stem
)
def test_collector_configs_validate(config: Path) -> None:
    """The OpenTelemetry Collector configs of deploy/examples/ are ones the Collector
    accepts, with their defaults (tests/kernel/test_gateway.py runs them)."""
    found = sorted((ROOT / ".cache" / "otelcol").glob("otelcol-v*"))
    assert found, "the Collector is built by scripts/setup.sh (scripts/build-otelcol.sh)"
    out = subprocess.run(
        [str(found[-1]), "validate", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
