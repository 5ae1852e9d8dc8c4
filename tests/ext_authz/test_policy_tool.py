"""keyrelay-policy: validate, digest, allow, revoke and diff on real files (with comments, flow and block
lists, bad input), through the installed console script for at least one case each."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from ext_authz.policy import load_policy, parse_policy
from ext_authz.policy_tool import main
from tests.support.procs import REPO, base_env, script

KEY = "sk-tool-SECRET-0123456789"
OTHER = "sk-tool-OTHERSECRET-0123456789"
D_KEY = hashlib.sha256(KEY.encode()).hexdigest()
D_OTHER = hashlib.sha256(OTHER.encode()).hexdigest()
EXAMPLE = REPO / "examples" / "policy.yaml"

COMMENTED = f"""\
# Team policy: owned by platform (reviewed in PRs)
version: 1
require_key: true   # keys are personal
allowlist:          # who may call
  - sha256: {"a" * 64}
    tenant: team-a  # alice
    note: alice laptop
  - {{sha256: {"b" * 64}, tenant: team-b}}
revoked:            # leaked keys
routes:
  root: {{require_key: false}}   # Claude Code's HEAD / probe
"""

FLOW = f"""\
version: 1
allowlist: [{{sha256: {"a" * 64}, tenant: team-a}}]
revoked: []
"""


def run(*args: str, stdin: str = "", name: str = "keyrelay-policy") -> subprocess.CompletedProcess:
    return subprocess.run([script(name), *args], input=stdin, capture_output=True, text=True, env=base_env(),
                          timeout=30)


def comments(text: str) -> list[str]:
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


# ---------------------------------------------------------------------------------------------- validate

INVALID = [
    ("unknown field", "version: 1\nrequre_key: true\n", 2, "unknown field 'requre_key'"),
    ("bad yaml", "version: 1\nrevoked: [\n", 3, "invalid YAML"),
    ("duplicate key", "version: 1\nrequire_key: true\nrequire_key: false\n", 3, "duplicate key 'require_key'"),
    ("a key instead of a digest", f"version: 1\nrevoked:\n  - sha256: {KEY}\n", 3, "64 hexadecimal characters"),
    ("dry_run passthrough", "version: 1\ndry_run: {passthrough: false}\n", 2, "unknown field 'passthrough'"),
]


@pytest.mark.parametrize("name,text,line,problem", INVALID, ids=[c[0] for c in INVALID])
def test_validate_reports_file_line_problem(tmp_path: Path, capsys, name: str, text: str, line: int,
                                           problem: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{bad}:{line}: ") and problem in err[0]


def test_validate_console_script_several_files(tmp_path: Path) -> None:
    files = []
    for index, (_, text, _, _) in enumerate(INVALID):
        path = tmp_path / f"bad{index}.yaml"
        path.write_text(text)
        files.append(path)
    good = tmp_path / "good.yaml"
    good.write_text(COMMENTED)
    result = run("validate", str(EXAMPLE), str(good), *map(str, files), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == len(files) + 1
    for error, path, (_, _, line, problem) in zip(errors, files, INVALID):
        assert error.startswith(f"{path}:{line}: ") and problem in error
    assert errors[-1].startswith(f"{tmp_path / 'missing.yaml'}: cannot read policy file")
    assert f"{good}: ok (digest {load_policy(good).short_digest})" in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert run("validate", str(EXAMPLE), str(good)).returncode == 0


# ------------------------------------------------------------------------------------------------ digest


def test_digest_console_script_and_alias() -> None:
    for name, args in (("keyrelay-policy", ("digest",)), ("keyrelay-key-digest", ())):
        result = run(*args, stdin=f"{KEY}\n{OTHER}\n", name=name)
        assert result.returncode == 0 and result.stdout.split() == [D_KEY, D_OTHER]
        assert KEY not in result.stdout + result.stderr
    result = run("digest", "--key-id", stdin=KEY + "\n")
    assert result.stdout == D_KEY[:16] + "\n"
    result = run("digest", stdin="sk-has space\n")
    assert result.returncode == 1 and "contains whitespace" in result.stderr and "has space" not in result.stderr


# ------------------------------------------------------------------------------------------ allow / revoke

EDITS = [
    # name, initial text, argv after the file, stdin, expected digest list, expected tenant
    ("revoke into null list, block style", COMMENTED, ["revoke", "--note", "leaked"], KEY, "revoked", ""),
    ("allow into block list", COMMENTED, ["allow", "--tenant", "team-c"], KEY, "allowlist", "team-c"),
    ("allow by digest", COMMENTED, ["allow", "--tenant", "team-c", "--sha256", D_KEY.upper()], "", "allowlist",
     "team-c"),
    ("revoke into flow list", FLOW, ["revoke"], KEY, "revoked", ""),
    ("allow into flow list", FLOW, ["allow", "--tenant", "team-f"], KEY, "allowlist", "team-f"),
    ("revoke in the example file", None, ["revoke"], KEY, "revoked", ""),
]


@pytest.mark.parametrize("name,text,argv,stdin,where,tenant", EDITS, ids=[e[0] for e in EDITS])
def test_edit_keeps_comments_order_and_is_valid(tmp_path: Path, name, text, argv, stdin, where, tenant) -> None:
    path = tmp_path / "policy.yaml"
    if text is None:
        shutil.copy(EXAMPLE, path)
        text = path.read_text()
    else:
        path.write_text(text)
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    result = run(argv[0], str(path), *argv[1:], stdin=stdin + "\n" if stdin else "")
    assert result.returncode == 0, result.stderr
    new = path.read_text()
    policy = parse_policy(new)
    if where == "revoked":
        assert D_KEY in policy.revoked
    else:
        assert policy.allowlist[D_KEY] == tenant
    assert comments(new) == comments(text)                        # every comment, in order
    top = lambda t: [l.split(":")[0] for l in t.splitlines() if l[:1].isalpha()]  # noqa: E731
    assert top(new) == top(text)                                  # top-level order
    old_policy = parse_policy(text)
    assert (old_policy.allowlist or {}).items() <= (policy.allowlist or {}).items()
    assert old_policy.revoked <= policy.revoked
    assert path.stat().st_ino != inode and oct(path.stat().st_mode & 0o777) == "0o640"   # renamed into place
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]                      # no temp file left
    assert KEY not in new + result.stdout + result.stderr
    assert D_KEY[:16] in result.stdout
    # Twice is a no-op.
    again = run(argv[0], str(path), *argv[1:], stdin=stdin + "\n" if stdin else "")
    assert again.returncode == 0 and "already" in again.stdout and path.read_text() == new


def test_flow_lists_stay_flow(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(FLOW)
    assert main(["revoke", str(path), "--sha256", D_KEY]) == 0
    assert main(["allow", str(path), "--sha256", D_OTHER, "--tenant", "team-o"]) == 0
    text = path.read_text()
    assert "revoked: [" in text and D_KEY in parse_policy(text).revoked   # ruamel may write [sha256: ...]
    assert f"{{sha256: {D_OTHER}, tenant: team-o}}]" in text


REFUSED = [
    # name, initial text, argv after the file, stdin, message
    ("no allowlist", "version: 1\n", ["allow", "--tenant", "t"], KEY, "has no allowlist"),
    ("invalid file", "version: 1\nrequire_key: maybe\n", ["revoke"], KEY, "policy.yaml:2: require_key must be"),
    ("key with whitespace", COMMENTED, ["revoke"], "sk-bad key", "contains whitespace"),
    ("no key", COMMENTED, ["revoke"], "", "no key given"),
    ("two keys", COMMENTED, ["revoke"], f"{KEY}\n{OTHER}", "expected one key"),
    ("a key as --sha256", COMMENTED, ["revoke", "--sha256", KEY], "", "64 hexadecimal characters"),
    ("tenant the loader rejects", COMMENTED, ["allow", "--tenant", "team a!"], KEY,
     "the edited policy would be invalid, file left unchanged"),
    ("other tenant already", COMMENTED, ["allow", "--tenant", "team-z", "--sha256", "a" * 64], "",
     "already allowed with tenant team-a"),
]


@pytest.mark.parametrize("name,text,argv,stdin,message", REFUSED, ids=[r[0] for r in REFUSED])
def test_edit_refuses_bad_input_and_leaves_the_file(tmp_path: Path, name, text, argv, stdin, message) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    before = path.stat()
    result = run(argv[0], str(path), *argv[1:], stdin=stdin + "\n" if stdin else "")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert path.read_text() == text and path.stat().st_ino == before.st_ino
    assert [p.name for p in tmp_path.iterdir()] == ["policy.yaml"]
    assert KEY not in result.stdout + result.stderr and "bad key" not in result.stderr


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    """While edits run, a reader that parses the file as fast as it can only ever sees complete policies."""
    path = tmp_path / "policy.yaml"
    path.write_text(COMMENTED)
    seen, errors, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.append(len(parse_policy(path.read_bytes()).revoked))
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(30):
            assert main(["revoke", str(path), "--sha256", hashlib.sha256(f"k{n}".encode()).hexdigest()]) == 0
    finally:
        stop.set()
        thread.join()
    seen.append(len(parse_policy(path.read_bytes()).revoked))
    assert errors == [] and len(seen) > 10 and seen[-1] == 30 and seen == sorted(seen)


# -------------------------------------------------------------------------------------------------- diff

BASE = f"""\
version: 1
key_format: '^sk-.+$'
allowlist:
  - {{sha256: {D_KEY}, tenant: team-a}}
revoked: []
routes:
  root: {{require_key: false}}
"""

DIFFS = [
    ("same", BASE, [], "summary: no changes"),
    ("revoke", BASE.replace("revoked: []", f"revoked: [{{sha256: {D_OTHER}}}]"),
     [f"[tightens] revoked: key {D_OTHER[:16]} revoked"], "summary: tightens"),
    ("allow another key", BASE.replace("revoked: []", f"  - {{sha256: {D_OTHER}, tenant: team-b}}\nrevoked: []"),
     [f"[loosens] allowlist: key {D_OTHER[:16]} allowed (tenant team-b)"], "summary: loosens"),
    ("tenant moved", BASE.replace("tenant: team-a", "tenant: team-z"),
     [f"[loosens] allowlist: key {D_KEY[:16]} tenant team-a -> team-z"], "summary: loosens"),
    ("allowlist dropped", BASE.replace(f"allowlist:\n  - {{sha256: {D_KEY}, tenant: team-a}}\n", ""),
     ["[loosens] allowlist removed: every well-formed, unrevoked key passes"], "summary: loosens"),
    ("route override loosened", BASE.replace("root: {require_key: false}", "root: {require_key: false}\n"
                                             "  messages: {key_format: null}"),
     ["[loosens] routes.messages.key_format: '^sk-.+$' -> none"], "summary: loosens"),
    ("default tightened", BASE.replace("version: 1\n", "version: 1\nmax_key_length: 128\n"),
     ["[tightens] defaults.max_key_length: 1024 -> 128"], "summary: tightens"),
    ("route override removed", BASE.replace("routes:\n  root: {require_key: false}\n", ""),
     ["[tightens] routes.root.require_key: false -> true"], "summary: tightens"),
    ("passthrough off", BASE.replace("version: 1\n", "version: 1\npassthrough: false\n"),
     ["[loosens] defaults.passthrough: true -> false"], "summary: loosens"),
    ("key source added", BASE.replace("version: 1\n", "version: 1\nkey_sources: [x-api-key]\n"),
     ["[tightens] defaults.key_sources: [x-api-key, authorization] -> [x-api-key]"], "summary: tightens"),
    ("dry-run rollout", BASE + "dry_run: {require_key: true}\n",
     ["[neutral] dry_run added (it logs, never denies)"], "summary: no decision changes"),
    ("decision log", BASE + "decision_log: {mode: denials}\n", ["[neutral] decision log: off -> denials"],
     "summary: no decision changes"),
]


@pytest.mark.parametrize("name,new,lines,summary", DIFFS, ids=[d[0] for d in DIFFS])
def test_diff(tmp_path: Path, capsys, name: str, new: str, lines: list[str], summary: str) -> None:
    (tmp_path / "old.yaml").write_text(BASE)
    (tmp_path / "new.yaml").write_text(new)
    assert main(["diff", str(tmp_path / "old.yaml"), str(tmp_path / "new.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == lines and out[-1].startswith(summary)


def test_diff_console_script_and_bad_input(tmp_path: Path) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(BASE)
    new.write_text(BASE.replace("revoked: []", f"revoked: [{{sha256: {D_KEY}}}]") + "  health: {require_key: false}\n")
    result = run("diff", str(old), str(new))
    assert result.returncode == 0
    assert result.stdout.splitlines() == [f"[tightens] revoked: key {D_KEY[:16]} revoked",
                                          "[loosens] routes.health.require_key: true -> false",
                                          result.stdout.splitlines()[-1]]
    assert result.stdout.splitlines()[-1].startswith("summary: loosens")
    new.write_text("version: 1\nrevoked: {}\n")
    result = run("diff", str(old), str(new))
    assert result.returncode == 1 and result.stderr.startswith(f"{new}:2: revoked must be a list")
