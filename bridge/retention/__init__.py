"""Retention and erasure of calls: what is kept, for how long, and how a call is erased.

- :mod:`~bridge.retention.files`: a call's files in the recording directory (recordings, batch JSON,
  anything named after its CallSid), and the sweeper that deletes them past ``BRIDGE_RETENTION_SECONDS``;
- :mod:`~bridge.retention.erase`: erasing one call, in Redis (:mod:`bridge.store.deletion`) and on disk.

Redis keys expire by themselves (every key of a call gets the retention TTL when the call ends); files
do not, hence the sweeper. Operators: docs/retention-and-webhooks.md.
"""
