"""The parts of `make image-check` that need no build: what the Dockerfile's final stage declares, how an image's
OCI config is read and compared with it, the buildah and mmdebstrap command lines, and `verify`, which turns a
sandboxed Pod run into the list of what is wrong (shared with tests/packaging/test_sandbox.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tests.k8s.test_dockerfile import DOCKERFILE
from tests.packaging.image import HOST_CA_BUNDLE, OFFICIAL_PATH, Buildah, ImageConfig, build_argv, \
    config_differences, dockerfile_config, image_config, mmdebstrap_argv
from tests.packaging.pods import PodPlan, PodRun, verify

# The official python:3.11.13-slim-bookworm config (its Env, abridged to what the Dockerfile builds on).
OFFICIAL_BASE = {"Env": [f"PATH={OFFICIAL_PATH}", "LANG=C.UTF-8", "PYTHON_VERSION=3.11.13"], "Cmd": ["python3"]}
# What `buildah inspect --type image` reported (OCIv1.config) for the image built from this Dockerfile.
BUILT = {
    "User": "10001:10001", "ExposedPorts": {"8082/tcp": {}, "9000/tcp": {}, "9090/tcp": {}},
    "Env": ["LANG=C.UTF-8", "PYTHON_VERSION=3.11.13", "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1",
            "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LITELLM_LOCAL_MODEL_COST_MAP=True", "HOME=/tmp",
            f"PATH=/opt/keyrelay/bin:{OFFICIAL_PATH}"],
    "Cmd": ["keyrelay-translator"], "WorkingDir": "/tmp", "Labels": {"io.buildah.version": "1.28.2"},
}


def expected() -> ImageConfig:
    return dockerfile_config(DOCKERFILE.read_text(encoding="utf-8"), image_config(OFFICIAL_BASE))


def test_the_dockerfile_declares_the_pods_user_command_ports_and_environment():
    config = expected()
    assert config.user == "10001:10001" and config.cmd == ("keyrelay-translator",) and config.workdir == "/tmp"
    assert config.exposed == {"8082/tcp", "9000/tcp", "9090/tcp"}
    assert config.env["PATH"] == f"/opt/keyrelay/bin:{OFFICIAL_PATH}"  # $PATH expanded against the base's
    assert config.env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True" and config.env["HOME"] == "/tmp"
    assert config.env["LANG"] == "C.UTF-8"  # inherited from the base


def drop_env(name: str) -> dict:
    return {**BUILT, "Env": [e for e in BUILT["Env"] if not e.startswith(f"{name}=")]}


@pytest.mark.parametrize("oci,difference", [
    (BUILT, None),
    ({**BUILT, "User": "0"}, "user: expected '10001:10001', image has '0'"),
    ({k: v for k, v in BUILT.items() if k != "User"}, "user: expected '10001:10001', image has ''"),
    ({**BUILT, "Cmd": ["python3"]}, "cmd: expected ('keyrelay-translator',), image has ('python3',)"),
    ({**BUILT, "Entrypoint": ["/bin/sh"]}, "entrypoint: expected (), image has ('/bin/sh',)"),
    ({**BUILT, "ExposedPorts": {"8082/tcp": {}}}, "exposed: expected"),
    ({**BUILT, "WorkingDir": "/"}, "workdir: expected '/tmp', image has '/'"),
    (drop_env("LITELLM_LOCAL_MODEL_COST_MAP"), "ENV LITELLM_LOCAL_MODEL_COST_MAP: expected 'True', image has None"),
    ({**BUILT, "Env": [*BUILT["Env"][:-1], f"PATH={OFFICIAL_PATH}"]}, "ENV PATH: expected '/opt/keyrelay/bin:"),
], ids=["as-built", "root", "no-user", "cmd", "entrypoint", "ports", "workdir", "no-cost-map-env", "path"])
def test_config_differences_name_each_deviation(oci, difference):
    found = config_differences(expected(), image_config(oci))
    if difference is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(difference), found


def test_shell_form_cmd_and_env_references_follow_dockers_rules():
    text = "FROM base\nENV A=1 B=$A\nENV C=${A}x\nCMD keyrelay-translator --port 8082\nEXPOSE 53/udp 80\n"
    config = dockerfile_config(text, ImageConfig(env={"A": "0"}))
    assert config.env == {"A": "1", "B": "0", "C": "1x"}  # one ENV line sees the environment before it
    assert config.cmd == ("/bin/sh", "-c", "keyrelay-translator --port 8082")
    assert config.exposed == {"53/udp", "80/tcp"}


def test_build_runs_the_dockerfile_unchanged_on_the_given_base(tmp_path):
    b = Buildah(tmp_path, "chroot")
    argv = build_argv(b, "localhost/keyrelay:t", "localhost/base:t", Path("/src"), "/host/ca.pem",
                      {"https_proxy": "http://proxy:3128", "PIP_INDEX_URL": "http://index/simple"})
    assert argv[:5] == ["buildah", "--root", str(tmp_path / "storage"), "--runroot", str(tmp_path / "run")]
    assert argv[argv.index("--build-arg") + 1] == "PYTHON_IMAGE=localhost/base:t"
    assert argv[argv.index("--isolation") + 1] == "chroot" and argv[-1] == "/src"
    assert argv[argv.index("--volume") + 1] == f"/host/ca.pem:{HOST_CA_BUNDLE}:ro"
    assert "https_proxy=http://proxy:3128" in argv and not any("PIP_INDEX_URL" in a for a in argv)
    assert "--volume" not in build_argv(b, "r", "b", Path("/src"), None, {})


def test_stand_in_base_comes_from_debian_bookworm(tmp_path):
    argv = mmdebstrap_argv(tmp_path / "rootfs.tar", "http://mirror/debian", "http://mirror/debian-security")
    packages = set(next(a for a in argv if a.startswith("--include=")).removeprefix("--include=").split(","))
    assert {"python3", "python3-venv", "python3-pip", "python-is-python3", "passwd"} <= packages
    assert "bookworm" in argv and "deb http://mirror/debian-security bookworm-security main" in argv


# ------------------------------------------------------------------------------------------------ verify

PLAN = PodPlan(uid=10001, gid=10001, tmpfs=["/tmp"], spec={
    "containers": [{"name": "ext-authz"}], "probes": [{}, {}, {}], "check": {"port": 9000}, "message": None})


def good_steps() -> dict:
    return {
        "confinement": [{"uid": 10001, "euid": 10001, "gid": 10001, "cap_eff": "0" * 16, "cap_prm": "0" * 16,
                         "cap_bnd": "0" * 16, "no_new_privs": "1",
                         "writes": {"/": "EROFS", "/tmp": "writable", "/dev/shm": "writable"}}],
        "started": [{"container": "ext-authz"}],
        "probe": [{"ok": True}] * 3,
        "check": [{"with_key": {"code": 0, "authorization_is_bearer_key": True},
                   "without_key": {"code": 16, "denied_status": 401}}],
        "running": [{"ext-authz": True}],
        "stopped": [{"ext-authz": 0}],
    }


def changed(path: str, value) -> dict:
    steps = good_steps()
    *keys, last = path.split(".")
    target = steps
    for key in keys:
        target = target[int(key)] if isinstance(target, list) else target[key]
    target[last] = value
    return steps


@pytest.mark.parametrize("steps,problem", [
    (good_steps(), None),
    (changed("confinement.0.uid", 0), "runs as uid 0"),
    (changed("confinement.0.cap_bnd", "00000000a80425fb"), "capabilities left"),
    (changed("confinement.0.no_new_privs", "0"), "no_new_privs"),
    (changed("confinement.0.writes", {"/": "writable", "/tmp": "writable", "/dev/shm": "writable"}), "writable:"),
    (changed("confinement.0.writes", {"/": "EACCES", "/tmp": "writable", "/dev/shm": "writable"}),
     "writes refused otherwise"),
    (changed("probe", [{"ok": True}] * 2 + [{"ok": False}]), "probe failed"),
    (changed("check.0.with_key.authorization_is_bearer_key", False), "Check with the key"),
    (changed("check.0.without_key.code", 0), "Check without a key"),
    (changed("running.0.ext-authz", False), "not running"),
    (changed("stopped.0.ext-authz", -9), "stopped with"),
], ids=["ok", "uid", "caps", "nnp", "root-writable", "not-erofs", "probe", "bearer", "no-key-allowed", "died",
        "sigterm"])
def test_verify_names_what_differs_from_the_pod(steps, problem):
    found = verify(PLAN, PodRun(0, steps, ""))
    assert found == [] if problem is None else (len(found) == 1 and found[0].startswith(problem)), found


def test_verify_fails_a_sandbox_that_did_not_finish():
    assert verify(PLAN, PodRun(1, {}, "")) == ["the sandbox exited 1 before the runner finished"]
    message_plan = dataclasses.replace(PLAN, spec={**PLAN.spec, "check": None, "message": {"url": "u"}})
    assert verify(message_plan, PodRun(0, good_steps(), ""))[0].startswith("message:")
