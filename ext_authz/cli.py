"""Console scripts: `keyrelay-ext-authz` (the service) and `keyrelay-key-digest` (sha256 of a key for the policy).

Flags win over environment variables (settings.py). Bad configuration exits non-zero with one line on stderr.
The ready line on stdout is `ready: ext_authz grpc on <host:port> http on <host:port>` (docs/interfaces.md)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Sequence

from .policy import PolicyError
from .settings import PROG, SettingsError, resolve_config
from .startup import initial_policy, run_single


def main(argv: Sequence[str] | None = None) -> int:
    from . import logs

    try:
        cfg = resolve_config(argv, os.environ)
        logs.setup(cfg.log_level)
        policy = initial_policy(cfg)
    except (SettingsError, PolicyError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        if cfg.workers > 1:
            from .workers import run_workers
            return run_workers(cfg, policy)
        return run_single(cfg, policy)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------------------------------- key digest


def digest_main(argv: Sequence[str] | None = None) -> int:
    """Print the sha256 hex digest of a key for the policy file, reading the key from stdin (one key per line)
    or from a no-echo prompt. The key itself is never printed."""

    from .decide import KEY_ID_LENGTH, key_digest
    from .extract import key_problem
    from .policy import MAX_KEY_LENGTH_LIMIT

    parser = argparse.ArgumentParser(
        prog="keyrelay-key-digest",
        description="Print the SHA-256 digest of an API key for the keyrelay policy (allowlist/revoked). "
                    "Reads the key from stdin, or prompts without echo on a terminal.")
    parser.add_argument("--key-id", action="store_true",
                        help=f"print the {KEY_ID_LENGTH}-hex x-authz-key-id fingerprint instead of the full digest")
    args = parser.parse_args(argv)
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            keys = [getpass.getpass("API key (input hidden): ").strip()]
        except (EOFError, KeyboardInterrupt):
            print("keyrelay-key-digest: no key given", file=sys.stderr)
            return 1
    else:
        keys = [line.strip() for line in (sys.stdin.read() if sys.stdin else "").splitlines() if line.strip()]
    if not keys or not keys[0]:
        print("keyrelay-key-digest: no key given (pipe it on stdin or type it at the prompt)", file=sys.stderr)
        return 1
    out = []
    for number, key in enumerate(keys, 1):
        problem = key_problem(key, MAX_KEY_LENGTH_LIMIT)
        if problem:
            where = f"key on line {number}" if len(keys) > 1 else "the key"
            print(f"keyrelay-key-digest: {where} {problem}; ext_authz would reject it", file=sys.stderr)
            return 1
        digest = key_digest(key)
        out.append(digest[:KEY_ID_LENGTH] if args.key_id else digest)
    print("\n".join(out))
    return 0
