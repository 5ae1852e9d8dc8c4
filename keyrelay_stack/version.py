"""The installed distribution's version, and the `--version` flag every keyrelay command line shares."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

DISTRIBUTION = "keyrelay"
# A source tree imported without being installed has no distribution metadata.
UNINSTALLED = "0+unknown"


def package_version(distribution: str = DISTRIBUTION) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return UNINSTALLED


class _VersionAction(argparse.Action):
    """argparse's own `version` action needs the text when the parser is built; this one looks the metadata up
    only when `--version` is given, so a service's start-up does not pay for it."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None, name=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.name = name

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{self.name or parser.prog} {package_version()}", file=sys.stdout, flush=True)
        parser.exit(0)


def add_version_flag(parser: argparse.ArgumentParser, name: str | None = None) -> argparse.ArgumentParser:
    """`--version`: print `<name, default the parser's prog> <version of the keyrelay distribution>` and exit 0."""
    parser.add_argument("--version", action=_VersionAction, name=name, help="print the keyrelay version and exit")
    return parser
