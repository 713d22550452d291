"""The server's access log, without credentials: a private link ``/r/<token>`` is logged as
``/r/[token]``, so a log file (or whoever can read the terminal) never holds a working link."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

LINK = re.compile(r"(/r/)[^/?#\s]+")


def redact_path(path: str) -> str:
    return LINK.sub(r"\1[token]", path)


class RedactTokens(logging.Filter):
    """For uvicorn's access records: args are (client, method, path, http_version, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_path(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_path(record.msg)
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging setup with the redacting filter on its access handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    config["handlers"]["access"].setdefault("filters", []).append("redact_tokens")
    return config
