"""`make image-check`: build the Dockerfile with buildah and run the Pods from the built image.

Not part of `make test` (it needs root, Debian's buildah, mmdebstrap and bubblewrap, and takes minutes); pytest
collects this file only when it is named on the command line (its name does not match `test_*.py`).

1. The base: `KEYRELAY_IMAGE_BASE` (for example `python:3.11.13-slim-bookworm` where a registry is reachable), or
   a stand-in made from Debian packages (tests/packaging/image.py), kept in the check's own buildah storage
   (`KEYRELAY_IMAGE_CHECK_DIR`) and reused by later runs.
2. `buildah build` of the Dockerfile unchanged, with `--build-arg PYTHON_IMAGE=<base>`.
3. The image's configuration (USER, CMD, EXPOSE, ENV, WORKDIR) against what the Dockerfile declares, and what
   must not be in it (the wheels, the sources, pip, compilers).
4. Each Pod of the rendered manifests run from the image's root filesystem (`buildah mount` of a working
   container) in the bubblewrap sandbox of tests/packaging/pods.py: uid 10001, read-only root, only /tmp
   writable, no capabilities, the manifests' exact command lines, every probe, one Check, one message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.k8s.conftest import REPO, kubectl, rendered  # noqa: F401  (the rendered manifests)
from tests.k8s.test_dockerfile import DOCKERFILE
from tests.packaging.image import SUMMARY, Buildah, build_argv, config_differences, dockerfile_config, \
    environment_isolation, stand_in_base, step
from tests.packaging.pods import BASE_IMAGE_PATH, IMAGE_VENV, PODS, ImageRoot, bwrap_problem, plan_pod, run_pod, \
    summary, verify

IMAGE_REF = "localhost/keyrelay:image-check"
STAND_IN_REF = "localhost/keyrelay-python-stand-in:bookworm"
pytestmark = pytest.mark.timeout(1800)


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed (`make image-check` installs buildah, bubblewrap and mmdebstrap from "
                    "Debian when run as root; kubectl: see docs/k8s.md)")
    return path


@pytest.fixture(scope="session")
def kubectl() -> str:  # noqa: F811 - here a missing kubectl fails the check instead of skipping the Pods
    return tool("kubectl")


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    tool("buildah")
    workdir = Path(os.environ.get("KEYRELAY_IMAGE_CHECK_DIR", "/var/tmp/keyrelay-image-check"))
    workdir.mkdir(parents=True, exist_ok=True)
    return Buildah(workdir, environment_isolation())


@pytest.fixture(scope="session")
def base(buildah: Buildah) -> str:
    ref = os.environ.get("KEYRELAY_IMAGE_BASE")
    if ref:
        SUMMARY.append(f"base: {ref} (given)")
        return ref
    if buildah.has_image(STAND_IN_REF):
        SUMMARY.append(f"base: {STAND_IN_REF} (stand-in from Debian packages, kept from an earlier run)")
    else:
        tool("mmdebstrap")
        stand_in_base(buildah, STAND_IN_REF, os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian"),
                      os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"))
        SUMMARY.append(f"base: {STAND_IN_REF} (stand-in from Debian packages, made now)")
    SUMMARY.append(f"base size: {buildah.size(STAND_IN_REF)}")
    return STAND_IN_REF


@pytest.fixture(scope="session")
def image(buildah: Buildah, base: str) -> str:
    ca_bundle = os.environ.get("KEYRELAY_IMAGE_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    step(f"buildah build ({buildah.isolation} isolation) of the Dockerfile on {base}",
         build_argv(buildah, IMAGE_REF, base, REPO, ca_bundle if os.path.isfile(ca_bundle) else None,
                    dict(os.environ)))
    buildah.out("rmi", "--prune")  # the previous run's image, untagged by this build
    SUMMARY.append(f"image: {IMAGE_REF}, {buildah.size(IMAGE_REF)}")
    return IMAGE_REF


@pytest.fixture(scope="session")
def rootfs(buildah: Buildah, image: str):
    """A working container's root filesystem: the image's layers under a writable top layer, as a runtime has
    (the sandbox mounts it read-only; the top layer takes only the mount points a runtime would create)."""
    container = buildah.out("from", "--quiet", "--pull-never", image)
    try:
        yield Path(buildah.out("mount", container))
    finally:
        buildah.out("umount", container)
        buildah.out("rm", container)


@pytest.fixture(scope="session")
def bwrap() -> str:
    path = tool("bwrap")
    problem = bwrap_problem(path)
    if problem:
        pytest.fail(problem)
    return path


def test_image_config_is_what_the_dockerfile_declares(buildah, base, image):
    expected = dockerfile_config(DOCKERFILE.read_text(encoding="utf-8"), buildah.config(base))
    actual = buildah.config(image)
    assert actual.user == "10001:10001" and actual.env.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
    assert config_differences(expected, actual) == []
    SUMMARY.append(f"config: USER {actual.user}, CMD {list(actual.cmd)}, EXPOSE {sorted(actual.exposed)}, "
                   f"WORKDIR {actual.workdir}, ENV " + " ".join(f"{k}={v}" for k, v in sorted(actual.env.items())))


def test_image_holds_no_build_leftovers(rootfs):
    """The wheels were bind-mounted from the builder, pip was uninstalled, the sources stayed in the builder."""
    present = [p for p in ("wheels", "src", "opt/keyrelay/bin/pip", "usr/bin/gcc", "usr/bin/cc")
               if (rootfs / p).exists()]
    venv = rootfs / IMAGE_VENV.lstrip("/")
    present += [str(p.relative_to(rootfs)) for p in venv.glob("lib/python3*/site-packages/pip")]
    assert present == []


def test_image_python_runs_the_installed_package(rootfs):
    """The virtualenv's interpreter is the base image's, and it imports the installed package, not sources."""
    proc = subprocess.run([tool("chroot"), str(rootfs), f"{IMAGE_VENV}/bin/python", "-c",
                           "import os, sys, keyrelay_stack; "
                           "print(os.path.realpath(sys.executable), sys.version.split()[0], keyrelay_stack.__file__)"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": BASE_IMAGE_PATH, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    interpreter, version, location = proc.stdout.split()
    assert location.startswith(f"{IMAGE_VENV}/lib/"), location
    SUMMARY.append(f"python: {IMAGE_VENV}/bin/python -> {interpreter} ({version}); package at {location}")


@pytest.mark.parametrize("layout,name", PODS, ids=[f"{a}-{b}" for a, b in PODS])
def test_pod_runs_from_the_image(bwrap, rendered, buildah, image, rootfs, tmp_path, layout, name):
    plan = plan_pod(rendered[layout], name, image_env=buildah.config(image).env)
    run = run_pod(bwrap, plan, ImageRoot(rootfs), tmp_path)
    problems = verify(plan, run)
    SUMMARY.append(f"pod {layout}/{name}: {'ok' if not problems else 'FAILED'}: {summary(plan, run)}")
    assert problems == [], run.logs
