"""Structured logging: every line carries the call id when there is one.

Modules log with ``extra={"call_sid": ...}``; this formatter puts it on the line (plain text) or in
the object (JSON, for log shippers), so one grep follows one call across every part of the bridge.

Fields are written escaped: a control character (newline, carriage return, escape, NUL…), a Unicode
line or paragraph separator, or a bidirectional override in any field (the message, its arguments,
the call id, an exception's text) comes out as ``\\n``, ``\\x1b``, ``\\u2028``… so a value sent by a
caller or a client (a path, a form field) can never forge a log line or hide part of one. A
traceback keeps its own line breaks in text logs, each continuation line indented, so none of them
can pass for a record of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

#: C0 and C1 controls, DEL, line/paragraph separators and the bidi embedding/override/isolate marks.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control and line-breaking character written as an escape sequence."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_block(text: str) -> str:
    """A multi-line block (a traceback): escaped line by line, continuation lines indented."""
    return "\n".join(("  " if i else "") + escape(line) for i, line in enumerate(text.split("\n")))


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def _message(self, record: logging.LogRecord) -> str:
        try:
            return record.getMessage()
        except Exception:  # a bad format string must not lose the line
            return f"{record.msg!r} % {record.args!r}"

    def format(self, record: logging.LogRecord) -> str:
        call_sid = escape(str(getattr(record, "call_sid", "") or ""))
        message = escape(self._message(record))
        exc = self.formatException(record.exc_info) if record.exc_info else ""
        if self.as_json:
            doc: dict[str, object] = {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": escape(record.name),
                "msg": message,
            }
            if call_sid:
                doc["call_sid"] = call_sid
            if exc:
                doc["exc"] = "\n".join(escape(line) for line in exc.split("\n"))
            return json.dumps(doc, ensure_ascii=True)
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        tag = f" [{call_sid}]" if call_sid else ""
        line = f"{stamp} {record.levelname:<7} {escape(record.name)}{tag}: {message}"
        if exc:
            line += "\n  " + _escape_block(exc)
        return line


def setup(level: str = "info", *, as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "websockets", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


__all__ = ["escape", "setup"]
