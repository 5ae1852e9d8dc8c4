"""Render every kustomization once per session with the real `kubectl kustomize`."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# In CI the repository is cloned with the shared/ directory beside it; here too (/work/main, /work/shared).
ISTIO_CRDS = REPO.parent / "shared" / "schemas" / "istio" / "customresourcedefinitions.gen.yaml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")



@dataclass(frozen=True)
class Layout:
    name: str
    path: Path
    flags: tuple[str, ...] = ()


LAYOUTS = {
    "base": Layout("base", K8S / "base"),
    "istio": Layout("istio", K8S / "overlays" / "istio"),
    "standalone": Layout("standalone", K8S / "overlays" / "standalone"),
}


def kustomize(kubectl: str, path: Path, flags: tuple[str, ...] = ()) -> str:
    proc = subprocess.run([kubectl, "kustomize", *flags, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return proc.stdout


def parse(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if not path:
        pytest.skip("kubectl is not installed: the kustomizations under k8s/ cannot be rendered here "
                    "(install kubectl >= 1.27 to run tests/k8s)")
    return path


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict]]:
    return {name: parse(kustomize(kubectl, layout.path, layout.flags)) for name, layout in LAYOUTS.items()}


@pytest.fixture(scope="session")
def istio_crds() -> list[dict]:
    if not ISTIO_CRDS.is_file():
        message = f"Istio CRD schemas not found at {ISTIO_CRDS} (shared/ must sit beside the repository)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with open(ISTIO_CRDS, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d and d.get("kind") == "CustomResourceDefinition"]
