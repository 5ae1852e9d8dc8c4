"""`keyrelay-policy`: the policy tools a platform team runs in CI, in review and at a terminal.

    keyrelay-policy validate FILE...        file:line: problem per invalid file (exit 1), the loader's own errors
    keyrelay-policy digest [--key-id]       a key's SHA-256 from stdin or a no-echo prompt (never echoes the key)
    keyrelay-policy allow FILE --tenant T   add a key to the allowlist      (key on stdin/prompt, or --sha256)
    keyrelay-policy revoke FILE             add a key to `revoked`          (key on stdin/prompt, or --sha256)
    keyrelay-policy diff OLD NEW            what changes for whom, and whether the change tightens or loosens

`keyrelay-key-digest` is `keyrelay-policy digest` under its older name.

allow and revoke edit the YAML with ruamel.yaml's round-trip mode (comments, order, quoting and flow style stay
as written), validate the result with the service's own loader, and only then replace the file atomically: a
temporary file in the same directory, fsync, rename. ext_authz never sees a half-written file from these tools.
"""

from __future__ import annotations

import argparse
import getpass
import io
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from keyrelay_common.identity import KEY_ID_LENGTH, key_digest
from keyrelay_stack.version import add_version_flag

from .extract import key_problem
from .policy import DIGEST_PATTERN, MAX_KEY_LENGTH_LIMIT, PolicyError, load_policy, parse_policy
from .policy_diff import LOOSENS, TIGHTENS, compare, effect

PROG = "keyrelay-policy"
_BLOCK_ITEM = re.compile(r"^( *)- ")
_BLOCK_KEY = re.compile(r"^( *)[A-Za-z_][A-Za-z0-9_]*:\s*(#.*)?$")


class ToolError(Exception):
    """A one-line problem for stderr (never contains a key)."""


# ------------------------------------------------------------------------------------------------ keys


def read_keys(prompt: str = "API key (input hidden): ") -> list[str]:
    """Keys from stdin (one per line), or one key from a no-echo prompt when stdin is a terminal."""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            keys = [getpass.getpass(prompt).strip()]
        except (EOFError, KeyboardInterrupt):
            raise ToolError("no key given") from None
    else:
        keys = [line.strip() for line in (sys.stdin.read() if sys.stdin else "").splitlines() if line.strip()]
    if not keys or not keys[0]:
        raise ToolError("no key given (pipe it on stdin or type it at the prompt)")
    for number, key in enumerate(keys, 1):
        problem = key_problem(key, MAX_KEY_LENGTH_LIMIT)
        if problem:
            where = f"key on line {number}" if len(keys) > 1 else "the key"
            raise ToolError(f"{where} {problem}; ext_authz would reject it")
    return keys


def one_digest(sha256: str | None) -> str:
    """The digest from --sha256, or of the one key on stdin / at the prompt."""
    if sha256 is not None:
        if not DIGEST_PATTERN.match(sha256):
            raise ToolError("--sha256 must be 64 hexadecimal characters (the output of keyrelay-policy digest), "
                            "never the key itself")
        return sha256.lower()
    keys = read_keys()
    if len(keys) != 1:
        raise ToolError(f"expected one key on stdin, got {len(keys)}")
    return key_digest(keys[0])


# ------------------------------------------------------------------------------------------------ edits


def _yaml(text: str):
    """A round-trip ruamel.yaml instance whose list indentation matches the file's own (`- ` under its key,
    or indented by two)."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096
    offset = 2
    lines = text.splitlines()
    for index, line in enumerate(lines):
        item = _BLOCK_ITEM.match(line)
        if item and index:
            parent = next((_BLOCK_KEY.match(p) for p in reversed(lines[:index]) if p.strip()
                           and not p.lstrip().startswith("#")), None)
            if parent:
                offset = max(0, len(item.group(1)) - len(parent.group(1)))
                break
    rt.indent(mapping=2, sequence=offset + 2, offset=offset)
    return rt


def _append(seq, fields: list[tuple[str, str]], created: bool) -> None:
    """Append a mapping entry in the style of the list: `{sha256: ..}` in a flow list (`[...]`, which is how an
    empty list from the file is written) or in a list whose entries are all written that way, a block mapping
    otherwise (and in a list this tool `created` for a null value)."""
    from ruamel.yaml.comments import CommentedMap

    entry = CommentedMap(fields)
    flow = not created if len(seq) == 0 else \
        all(getattr(s, "fa", None) is not None and s.fa.flow_style() for s in seq)
    if flow:
        entry.fa.set_flow_style()
        if len(seq) == 0:
            seq.fa.set_flow_style()
    seq.append(entry)


def _digests(seq) -> dict[str, object]:
    return {str(item.get("sha256", "")).lower(): item for item in (seq or []) if hasattr(item, "get")}


def edit_policy(text: str, source: str, action: str, digest: str, tenant: str = "", note: str = "") -> tuple[str, str]:
    """Add `digest` to the allowlist (action "allow") or to `revoked` ("revoke"). Returns (new text, message);
    new text == text when nothing had to change. Raises ToolError, or PolicyError for an invalid input or
    result (the file is then left alone)."""
    from ruamel.yaml.comments import CommentedSeq

    parse_policy(text, source)  # refuse to edit an invalid file (its own file:line error)
    rt = _yaml(text)
    data = rt.load(text)
    fp = digest[:KEY_ID_LENGTH]
    if action == "allow":
        if "allowlist" not in data:
            raise ToolError(f"{source} has no allowlist, so every well-formed key already passes; add "
                            "`allowlist:` with the keys that should pass first")
        created = data["allowlist"] is None
        if created:
            data["allowlist"] = CommentedSeq()
        seq = data["allowlist"]
        existing = _digests(seq).get(digest)
        if existing is not None:
            if str(existing.get("tenant")) == tenant:
                return text, f"key {fp} is already allowed (tenant {tenant}) in {source}"
            raise ToolError(f"key {fp} is already allowed with tenant {existing.get('tenant')} in {source}; "
                            "change the tenant in the file")
        fields = [("sha256", digest), ("tenant", tenant)] + ([("note", note)] if note else [])
        _append(seq, fields, created)
        message = f"allowed key {fp} (tenant {tenant}) in {source}"
        if digest in _digests(data.get("revoked")):
            message += "; note: it is also revoked, so it stays denied"
    elif action == "revoke":
        created = data.get("revoked") is None
        if created:
            data["revoked"] = CommentedSeq()
        seq = data["revoked"]
        if digest in _digests(seq):
            return text, f"key {fp} is already revoked in {source}"
        _append(seq, [("sha256", digest)] + ([("note", note)] if note else []), created)
        message = f"revoked key {fp} in {source}"
    else:  # pragma: no cover - argparse limits the choices
        raise ToolError(f"unknown action {action}")
    out = io.StringIO()
    rt.dump(data, out)
    new_text = out.getvalue()
    try:
        parse_policy(new_text, source)
    except PolicyError as exc:
        raise ToolError(f"the edited policy would be invalid, file left unchanged: {exc}") from None
    return new_text, message


def replace_atomically(path: Path, text: str) -> None:
    """Write `text` next to `path` and rename it over `path` (same directory, so the rename is atomic), keeping
    the file's mode. A symlink is followed: its target is replaced."""
    target = Path(os.path.realpath(path))
    mode = stat.S_IMODE(target.stat().st_mode)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


# -------------------------------------------------------------------------------------------- commands


def cmd_validate(args) -> int:
    bad = 0
    for name in args.files:
        try:
            policy = load_policy(name)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            bad += 1
            continue
        print(f"{name}: ok (digest {policy.short_digest})")
    return 1 if bad else 0


def cmd_digest(args) -> int:
    keys = read_keys()
    print("\n".join(key_digest(k)[:KEY_ID_LENGTH] if args.key_id else key_digest(k) for k in keys))
    return 0


def cmd_edit(args) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"{args.file}: cannot read: {getattr(exc, 'strerror', None) or exc.__class__.__name__}") \
            from None
    digest = one_digest(args.sha256)
    new_text, message = edit_policy(text, args.file, args.command, digest, getattr(args, "tenant", ""), args.note)
    if new_text != text:
        replace_atomically(path, new_text)
    print(message)
    return 0


def cmd_diff(args) -> int:
    old, new = load_policy(args.old), load_policy(args.new)
    changes = compare(old, new)
    for change in changes:
        print(change.line())
    summary = effect(changes)
    if summary == LOOSENS:
        print("summary: loosens: ext_authz applies it once the file stayed unchanged for --loosen-quiet-seconds "
              "(default 5 s)")
    elif summary == TIGHTENS:
        print("summary: tightens: ext_authz applies it at the next poll")
    elif changes:
        print("summary: no decision changes (dry-run rules or decision log only): applied at the next poll")
    else:
        print("summary: no changes")
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="keyrelay policy tools: validate, digest, allow, revoke, diff")
    add_version_flag(p)
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="check policy files; prints file:line: problem and exits 1 on errors")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.set_defaults(run=cmd_validate)
    d = sub.add_parser("digest", help="print the SHA-256 of keys read from stdin or a no-echo prompt")
    d.add_argument("--key-id", action="store_true",
                   help=f"print the {KEY_ID_LENGTH}-hex x-authz-key-id fingerprint instead of the full digest")
    add_version_flag(d, name=prog)  # `keyrelay-key-digest --version` names itself
    d.set_defaults(run=cmd_digest)
    for name, what in (("allow", "add a key to the allowlist"), ("revoke", "add a key to the revoked list")):
        e = sub.add_parser(name, help=f"{what} (edits FILE in place, atomically, keeping comments)")
        e.add_argument("file", metavar="FILE")
        e.add_argument("--sha256", help="the key's digest (default: read the key from stdin or a no-echo prompt)")
        e.add_argument("--note", default="", help="a note stored with the entry (never the key)")
        if name == "allow":
            e.add_argument("--tenant", required=True, help="the tenant the key maps to (x-authz-tenant)")
        e.set_defaults(run=cmd_edit)
    df = sub.add_parser("diff", help="what changes between two policy files, for whom, tighten or loosen")
    df.add_argument("old", metavar="OLD")
    df.add_argument("new", metavar="NEW")
    df.set_defaults(run=cmd_diff)
    return p


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return args.run(args)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except ToolError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def digest_main(argv: Sequence[str] | None = None) -> int:
    """`keyrelay-key-digest`: `keyrelay-policy digest` under its older name."""
    return main(["digest", *(sys.argv[1:] if argv is None else argv)], prog="keyrelay-key-digest")
