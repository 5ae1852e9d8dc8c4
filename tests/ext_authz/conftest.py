"""Fixtures shared by the ext_authz tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def keep_signal_handlers():
    """GrpcWorker.start installs SIGTERM/SIGINT handlers; in-process tests put pytest's back afterwards."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
