"""PCI/PII redaction: card numbers, expiry dates, security codes and SSNs masked before the bridge
stores or sends a transcript, and silenced in the recording after the batch pass (docs/redaction.md).

- :mod:`bridge.redact.detector`: spoken numbers to digit runs, and what of them is card data;
- :mod:`bridge.redact.live`: one call's redactor, with the hold-back of open digit runs;
- :mod:`bridge.redact.batch`: the compliance transcript, and the spans of the recording to silence;
- :mod:`bridge.redact.audio`: silencing spans of one channel of a WAV file.
"""
