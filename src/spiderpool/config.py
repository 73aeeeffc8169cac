"""Reading ``conf.yml`` (see ``spiderpool.api.conf``) into a program's argument defaults: an
explicit flag wins over the file, the file over the built-in default."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from spiderpool.api import conf

log = logging.getLogger(__name__)


def parse_args(
    parser: argparse.ArgumentParser, argv: list[str] | None, defaults: Callable[[conf.Conf], dict[str, object]]
) -> argparse.Namespace:
    """Parse ``argv``, taking defaults from the file named by ``--config`` (when given)."""
    parser.add_argument("--config", help="conf.yml of the spiderpool-conf ConfigMap (upstream's keys)")
    first, _ = parser.parse_known_args(argv)
    if first.config:
        try:
            text = Path(first.config).read_text()
            found = conf.parse(text, source=first.config)
            conf.check_supported(found, source=first.config)
        except (OSError, conf.ConfError) as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")
        if found.unknown:
            print(f"{parser.prog}: {first.config}: keys not used here: {', '.join(found.unknown)}", file=sys.stderr)
        parser.set_defaults(**{k: v for k, v in defaults(found).items() if v is not None})
    return parser.parse_args(argv)
