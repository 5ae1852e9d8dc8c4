"""Building the Dockerfile with buildah (daemonless, from Debian) and reading the built image's configuration.

The pure parts (what the Dockerfile's final stage declares, what an image's OCI config says, how they differ) are
tested in `make test` (tests/packaging/test_image_config.py); the build itself runs in `make image-check`
(tests/packaging/image_check.py).

When the Dockerfile's base (`python:3.11.13-slim-bookworm`) cannot be pulled (no container registry reachable),
`stand_in_base` makes a local stand-in from Debian packages with mmdebstrap: Debian bookworm with `python3`
(3.11 in /usr/bin), `python3-venv`, `python3-pip`, `python-is-python3`, `passwd` and `ca-certificates`, with the
official image's PATH and LANG. docs/k8s.md ("The image") says what that does and does not prove.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.k8s.test_dockerfile import DOCKERFILE, stages

# The official python:*-slim images' PATH and LANG, which the stand-in copies.
OFFICIAL_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
STAND_IN_PACKAGES = ("ca-certificates", "python3", "python3-venv", "python3-pip", "python-is-python3", "passwd")
# The slim images keep no documentation, man pages or translations; neither does the stand-in.
SLIM_DPKG_OPTIONS = ("path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*",
                     "path-exclude=/usr/share/locale/*", "path-include=/usr/share/doc/*/copyright")
DEBIAN_SOURCES = ("deb {mirror} bookworm main", "deb {mirror} bookworm-updates main",
                  "deb {security} bookworm-security main")
# Build arguments every Dockerfile has without declaring them (Docker and buildah alike); they reach RUN steps but
# are not recorded in the image.
PROXY_ARGS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STEP_TIMEOUT_S = 900
# One line per finished step or result, printed at the end of the pytest run (tests/packaging/conftest.py).
SUMMARY: list[str] = []


# ------------------------------------------------------------------------------------------ image config


@dataclass(frozen=True)
class ImageConfig:
    user: str = ""
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    exposed: frozenset[str] = frozenset()
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""


def image_config(oci: dict) -> ImageConfig:
    """The `config` object of an OCI image configuration (`buildah inspect --type image`'s `OCIv1.config`)."""
    return ImageConfig(user=oci.get("User", ""), cmd=tuple(oci.get("Cmd") or ()),
                       entrypoint=tuple(oci.get("Entrypoint") or ()),
                       exposed=frozenset(oci.get("ExposedPorts") or {}),
                       env=dict(item.partition("=")[::2] for item in oci.get("Env") or ()),
                       workdir=oci.get("WorkingDir", ""))


def exec_form(rest: str) -> tuple[str, ...]:
    """CMD/ENTRYPOINT arguments: the JSON (exec) form as is, the shell form as Docker runs it."""
    try:
        words = json.loads(rest)
    except ValueError:
        return ("/bin/sh", "-c", rest)
    return tuple(words)


def dockerfile_config(text: str, base: ImageConfig) -> ImageConfig:
    """What the Dockerfile's final stage makes of its base image's configuration (USER, CMD, ENTRYPOINT, EXPOSE,
    ENV, WORKDIR); `${NAME}`/`$NAME` in ENV values expand against the environment so far."""
    config = {"user": base.user, "cmd": base.cmd, "entrypoint": base.entrypoint, "exposed": set(base.exposed),
              "env": dict(base.env), "workdir": base.workdir}
    for inst, rest in stages(text)[1][-1].instructions:
        if inst == "USER":
            config["user"] = rest
        elif inst == "CMD":
            config["cmd"] = exec_form(rest)
        elif inst == "ENTRYPOINT":
            config["entrypoint"], config["cmd"] = exec_form(rest), ()
        elif inst == "EXPOSE":
            config["exposed"] |= {port if "/" in port else f"{port}/tcp" for port in rest.split()}
        elif inst == "WORKDIR":
            config["workdir"] = rest
        elif inst == "ENV":
            before = dict(config["env"])  # one ENV line sees the environment before it (Docker's rule)
            for word in shlex.split(rest):
                name, _, value = word.partition("=")
                config["env"][name] = re.sub(r"\$\{(\w+)\}|\$(\w+)",
                                             lambda m: before.get(m.group(1) or m.group(2), ""), value)
    return ImageConfig(user=config["user"], cmd=tuple(config["cmd"]), entrypoint=tuple(config["entrypoint"]),
                       exposed=frozenset(config["exposed"]), env=config["env"], workdir=config["workdir"])


def config_differences(expected: ImageConfig, actual: ImageConfig) -> list[str]:
    """Where the built image's configuration differs from what the Dockerfile declares ([] = nowhere)."""
    out = [f"{name}: expected {getattr(expected, name)!r}, image has {getattr(actual, name)!r}"
           for name in ("user", "cmd", "entrypoint", "exposed", "workdir")
           if getattr(expected, name) != getattr(actual, name)]
    out += [f"ENV {name}: expected {value!r}, image has {actual.env.get(name)!r}"
            for name, value in sorted(expected.env.items()) if actual.env.get(name) != value]
    return out


# ------------------------------------------------------------------------------------------------ buildah


def step(what: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run one build step, printing what runs and how long it took; fails with the output's tail."""
    print(f"==> {what}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, **kw)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}, {took:.0f} s): {shlex.join(argv)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"    done in {took:.1f} s", flush=True)
    SUMMARY.append(f"{what}: {took:.1f} s")
    return proc


@dataclass(frozen=True)
class Buildah:
    """buildah with its own storage under `workdir`, so the check neither reads nor changes other images."""

    workdir: Path
    isolation: str = "chroot"

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.workdir / "storage"), "--runroot", str(self.workdir / "run"), *args]

    def out(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(self.argv(*args))} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def has_image(self, ref: str) -> bool:
        return subprocess.run(self.argv("inspect", "--type", "image", ref), capture_output=True,
                              timeout=60).returncode == 0

    def config(self, ref: str) -> ImageConfig:
        return image_config(json.loads(self.out("inspect", "--type", "image", ref))["OCIv1"]["config"])

    def size(self, ref: str) -> str:
        return next(i["size"] for i in json.loads(self.out("images", "--json")) if ref in (i["names"] or ()))


def mmdebstrap_argv(tarball: Path, mirror: str, security: str) -> list[str]:
    return ["mmdebstrap", "--variant=apt", "--include=" + ",".join(STAND_IN_PACKAGES),
            *(f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTIONS), "bookworm", str(tarball),
            *(line.format(mirror=mirror, security=security) for line in DEBIAN_SOURCES)]


def stand_in_base(b: Buildah, ref: str, mirror: str, security: str) -> None:
    """A local image standing in for python:3.11.13-slim-bookworm, made from Debian packages."""
    with tempfile.TemporaryDirectory(dir=b.workdir) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        step("stand-in base: mmdebstrap Debian bookworm + python3", mmdebstrap_argv(tarball, mirror, security))
        container = b.out("from", "scratch")
        try:
            step("stand-in base: import the root filesystem", b.argv("add", container, str(tarball), "/"))
            b.out("config", "--env", f"PATH={OFFICIAL_PATH}", "--env", "LANG=C.UTF-8", "--cmd", "python3", container)
            b.out("commit", "--quiet", container, ref)
        finally:
            b.out("rm", container)


def build_argv(b: Buildah, ref: str, base_ref: str, context: Path, ca_bundle: str | None,
               env: dict[str, str]) -> list[str]:
    """`buildah build` of the Dockerfile as it is, on `base_ref`. The RUN steps see this machine's CA bundle (a
    bind mount, never part of a layer: pip in the builder stage reaches PyPI through whatever TLS this machine
    trusts) and its proxy settings (predefined build arguments, not recorded in the image)."""
    argv = b.argv("build", "--isolation", b.isolation, "--build-arg", f"PYTHON_IMAGE={base_ref}",
                  "--file", str(context / DOCKERFILE.name), "--tag", ref)
    if ca_bundle:
        argv += ["--volume", f"{ca_bundle}:{HOST_CA_BUNDLE}:ro"]
    argv += [a for name in PROXY_ARGS if env.get(name) for a in ("--build-arg", f"{name}={env[name]}")]
    return argv + [str(context)]


def environment_isolation() -> str:
    """buildah's own override (BUILDAH_ISOLATION) wins; chroot otherwise: the OCI runtime (crun/runc) needs a
    cgroup set-up that hosts with hybrid cgroups v1/v2 do not give it, and chroot isolation needs none."""
    return os.environ.get("BUILDAH_ISOLATION") or "chroot"
