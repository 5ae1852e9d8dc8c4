"""Console script `keyrelay-ext-authz` (the service). The policy tools (`keyrelay-policy`, `keyrelay-key-digest`)
are in policy_tool.py.

Flags win over environment variables (settings.py). Bad configuration exits non-zero with one line on stderr.
The ready line on stdout is `ready: ext_authz grpc on <host:port> http on <host:port>` (docs/interfaces.md)."""

from __future__ import annotations

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
