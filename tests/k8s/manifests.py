"""Pure helpers over rendered Kubernetes objects (dicts), shared by the k8s tests."""

from __future__ import annotations

import re
from typing import Any, Iterable

Obj = dict[str, Any]

WORKLOAD_KINDS = ("Deployment",)


def find(objs: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def pod_annotations(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"].get("annotations", {})


def containers(workload: Obj) -> list[Obj]:
    return pod_spec(workload)["containers"]


def container(workload: Obj, name: str) -> Obj:
    found = [c for c in containers(workload) if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']} has no container {name!r}"
    return found[0]


def workloads(objs: Iterable[Obj]) -> list[Obj]:
    return [o for o in objs if o.get("kind") in WORKLOAD_KINDS]


def selector_matches(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def flags(args: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` pairs of a container's args."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            out[key] = value
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[arg[2:]] = args[i + 1]
            i += 1
        elif arg.startswith("--"):
            out[arg[2:]] = ""
        i += 1
    return out


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def container_port(c: Obj, port: int | str) -> int | None:
    """Resolve a probe/Service port (number or name) against a container's declared ports."""
    for p in c.get("ports", []):
        if port == p["containerPort"] or port == p.get("name"):
            return p["containerPort"]
    return None


def listen_addrs(c: Obj) -> dict[int, str]:
    """Port -> bind host of the keyrelay processes, from their command-line flags (the process contract)."""
    cmd = (c.get("command") or [""])[0]
    f = flags(c.get("args", []))
    out: dict[int, str] = {}
    if cmd == "keyrelay-ext-authz":
        for key in ("grpc-addr", "http-addr"):
            host, port = split_addr(f[key])
            out[port] = host
    elif cmd == "keyrelay-translator":
        out[int(f["port"])] = f["host"]
    return out


def probes(c: Obj) -> list[tuple[str, Obj]]:
    return [(kind, c[kind]) for kind in ("startupProbe", "readinessProbe", "livenessProbe") if kind in c]


def image_ref(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    name, tag = image, None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    return name, tag, digest


HASH_SUFFIX = re.compile(r"-[a-z0-9]{10}$")
