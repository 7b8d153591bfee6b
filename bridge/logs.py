"""Structured logging: every line carries the call id when there is one.

Modules log with ``extra={"call_sid": ...}``; this formatter puts it on the line (plain text) or in
the object (JSON, for log shippers), so one grep follows one call across every part of the bridge.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        call_sid = getattr(record, "call_sid", "")
        if self.as_json:
            doc: dict[str, object] = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": record.getMessage(),
            }
            if call_sid:
                doc["call_sid"] = call_sid
            if record.exc_info:
                doc["exc"] = self.formatException(record.exc_info)
            return json.dumps(doc)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        tag = f" [{call_sid}]" if call_sid else ""
        line = f"{stamp} {record.levelname:<7} {record.name}{tag}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "info", *, as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "websockets", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


__all__ = ["setup"]
