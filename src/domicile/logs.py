"""Logging for the command line: levels, plain or JSON lines, no secrets.

The library logs through :mod:`logging` (``domicile.*`` loggers) and never
configures it; the command line calls :func:`configure` once, from its
global options: ``-v`` (info), ``-vv`` (debug: every batch transition),
``-q`` (errors only), ``--log-format json`` (one JSON object per line, for
machines).  Lines go to stderr, so that ``--json`` outputs on stdout stay
parseable.  Every line passes :class:`MaskSecrets`: a password in a database
URL is written as ``***``.  The library logs batch ids, datasets, stores and
counts, never a record's key or a subject's id.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

FORMATS = ("plain", "json")

# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^:/@\s]*:)([^@\s/]+)(@)")


def mask(text: str) -> str:
    """*text* with every URL password replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", text)


class MaskSecrets(logging.Filter):
    """Rewrites a record's message with :func:`mask` (arguments merged first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = mask(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def level_for(verbose: int, quiet: bool) -> int:
    """The ``domicile`` loggers' level for the global options."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def configure(verbose: int = 0, quiet: bool = False, fmt: str = "plain") -> None:
    """Send the ``domicile`` loggers to stderr at the level the options ask for."""
    logger = logging.getLogger("domicile")
    for handler in [h for h in logger.handlers if getattr(h, "_domicile", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._domicile = True  # type: ignore[attr-defined]
    handler.addFilter(MaskSecrets())
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbose, quiet))
