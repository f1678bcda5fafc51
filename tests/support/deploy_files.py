"""The files of deploy/, parsed: the compose file, the Kubernetes manifests (every YAML
under deploy/k8s, overlays included), the Dockerfile; shared by tests/deploy."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest (not the kustomization files)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def of_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == kind}


def containers() -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], c) for d in k8s_docs() if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]]


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def config() -> dict[str, str]:
    """The ConfigMap aiecs-config's data."""
    return of_kind("ConfigMap")["aiecs-config"]["data"]


def worker_version() -> str:
    text = (ROOT / "packages" / "worker" / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def option(command: list[str], name: str) -> str:
    """The value after ``name`` in a command line."""
    return command[command.index(name) + 1]
