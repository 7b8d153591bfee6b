"""The compliance job: rules checked on every call (batch report), and live alerts on finals.

- :mod:`~bridge.compliance.rules`: the rules file (``BRIDGE_COMPLIANCE_RULES``, TOML or YAML) and the
  shipped default;
- :mod:`~bridge.compliance.matcher`: phrase matching that survives recognition errors;
- :mod:`~bridge.compliance.models`: the stored report;
- :mod:`~bridge.compliance.evaluate`: a report from a batch transcript;
- :mod:`~bridge.compliance.alerts`: alert rules on live finals.

This package imports nothing at package level, so the store can load its document types alone.
"""
