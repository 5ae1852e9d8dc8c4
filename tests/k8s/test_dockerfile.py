"""`make test` does not build the Dockerfile (`make image-check` does, docs/k8s.md), so lint what can be checked:
pinned bases, a multi-stage build with no compilers in the final stage, a non-root numeric user that matches
the manifests, every COPY source present and inside the build context, and every entry point the manifests run
declared as a console script whose target exists."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
import tomllib
from dataclasses import dataclass, field

import pytest

from tests.k8s.conftest import REPO
from tests.k8s.manifests import containers, pod_spec, workloads

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPILERS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|rustc|cargo|python3-dev)\b")


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, line continuations joined, comments and parser directives dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    result: list[Stage] = []
    for inst, rest in instructions(text):
        if inst == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default
        elif inst == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], parts[0])
            result.append(Stage(image, parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        else:
            result[-1].instructions.append((inst, rest))
    return args, result


@pytest.fixture(scope="module")
def parsed() -> list[Stage]:
    return stages(DOCKERFILE.read_text(encoding="utf-8"))[1]


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def ignored(path: str, patterns: list[str]) -> bool:
    hit = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.replace("**/", "")) \
                or path.startswith(pattern + "/"):
            hit = not negate
    return hit


def test_instruction_parser_sees_continuations():
    parsed = instructions("# c\nFROM a:1 AS b\nRUN x \\\n && y\n")
    assert parsed == [("FROM", "a:1 AS b"), ("RUN", "x  && y")]


def test_multi_stage_with_pinned_bases(parsed):
    assert len(parsed) >= 2 and parsed[0].name == "builder"
    for stage in parsed:
        name, _, tag = stage.image.partition(":")
        assert tag and tag != "latest", f"unpinned base {stage.image}"
        assert re.match(r"\d+\.\d+\.\d+-slim", tag), f"pin an exact slim Python release, not {stage.image}"
        assert name in ("python", "docker.io/library/python")


def test_final_stage_runs_as_the_manifests_non_root_user(parsed, rendered):
    final = parsed[-1]
    users = [rest for inst, rest in final.instructions if inst == "USER"]
    assert users, "the final stage must set USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root uid lets the kubelet verify runAsNonRoot"
    for layout in ("base", "standalone"):
        for w in workloads(rendered[layout]):
            sc = pod_spec(w)["securityContext"]
            assert sc["runAsUser"] == int(uid) and sc["runAsGroup"] == int(gid or uid)


def test_final_stage_has_no_compilers_and_no_wheels_layer(parsed):
    final = parsed[-1]
    for inst, rest in final.instructions:
        if inst == "RUN":
            assert not re.search(r"apt-get install|apk add", rest), "install nothing with a compiler in runtime"
            assert not COMPILERS.search(rest), rest
        if inst in ("COPY", "ADD"):
            assert "/wheels" not in rest, "wheels are bind-mounted from the builder, never copied into a layer"


def test_final_stage_environment(parsed):
    env = " ".join(rest for inst, rest in parsed[-1].instructions if inst == "ENV")
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "the root filesystem is read-only in the cluster"


def test_every_copy_source_exists_and_is_in_the_context(parsed):
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if ln.strip() and not ln.startswith("#")]
    copied = []
    for stage in parsed:
        for inst, rest in stage.instructions:
            if inst not in ("COPY", "ADD"):
                continue
            words = [w for w in shlex.split(rest) if not w.startswith("--")]
            if "--from" in rest:
                continue
            for src in words[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"
                assert not ignored(src.rstrip("/"), patterns), f"{src} is excluded by .dockerignore"
                copied.append(src.rstrip("/"))
    project = pyproject()
    # What setuptools needs to build the wheel: pyproject, the readme it names, every package it includes.
    assert "pyproject.toml" in copied and project["project"]["readme"] in copied
    for include in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert include.rstrip("*") in copied, f"package {include} is not copied into the build"


def test_manifest_entry_points_are_console_scripts(rendered):
    scripts = pyproject()["project"]["scripts"]
    used = set()
    for layout in rendered:
        for w in workloads(rendered[layout]):
            for c in containers(w):
                command = c.get("command", [])
                if command and command[0].startswith("keyrelay-"):
                    used.add(command[0])
    assert used == {"keyrelay-ext-authz", "keyrelay-translator"}
    for name in sorted(used):
        module, _, attr = scripts[name].partition(":")
        target = getattr(importlib.import_module(module), attr, None)
        assert callable(target), f"{name} -> {scripts[name]} is not callable"


def test_exec_probes_use_the_image_interpreter(parsed, rendered):
    venv = re.search(r"python -m venv (\S+)", " ".join(r for i, r in parsed[-1].instructions if i == "RUN"))
    assert venv, "the runtime stage creates the virtualenv the probes call"
    for w in workloads(rendered["standalone"]):
        for c in containers(w):
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "exec" in c.get(kind, {}):
                    assert c[kind]["exec"]["command"][0] == f"{venv.group(1)}/bin/python"
