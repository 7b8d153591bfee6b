"""Every Redis key and channel name the bridge uses. Nothing else in the project spells a key.

All names start with the configurable prefix ``P`` (``BRIDGE_REDIS_PREFIX``, default ``bridge``), so
several deployments (or test runs) can share one Redis. ``<sid>`` is a Twilio CallSid.

Names are laid out for Redis Cluster (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags):
the braces are literal hash tags. Every key of a call carries ``{<sid>}``, so a call's keys share
one slot and its transactions and scripts stay on one node; the call indexes share the tag
``{calls}`` and the jobs queue ``{jobs}``, so each of them can change in one transaction too. No
command and no transaction of the store mixes two tags (the store's tests run on a real cluster too:
``tests/store/conftest.py``). Channels are not keys: pub/sub reaches every node of a cluster.

=====================================  ==========  ==================================================
key                                    type        content
=====================================  ==========  ==================================================
``P:call:{<sid>}``                     hash        call metadata (status, times, numbers, tracks as
                                                   ``track.<track>``, recognizer state per track as
                                                   ``recognizer.<track>``, which recognizer served
                                                   which span as ``served.<track>`` and the spans not
                                                   transcribed live as ``gaps.<track>`` (JSON lists
                                                   of events.ServedSpan / events.LiveGap),
                                                   ``custom.<name>`` stream parameters, ``finals``
                                                   count; stream handoff: ``audio_at`` heartbeat,
                                                   ``handoff_stream``/``handoff_at``/``handoff_probe``/
                                                   ``handoff_origin``/``handoff_done``, ``recovering``,
                                                   ``stream_gaps`` JSON list)
``P:call:{<sid>}:streams``             zset        every StreamSid the call had, scored by start time
``P:call:{<sid>}:live_streams``        set         StreamSids of the call's streams still running (the
                                                   one a status callback says ended leaves; none left
                                                   while the call is active: a stream was lost)
``P:call:{<sid>}:finals``              list        final JSON documents; index ``i`` holds ``seq=i+1``
``P:call:{<sid>}:final_ids``           hash        final id -> seq (makes writing a final idempotent)
``P:call:{<sid>}:batch``               string      the call's compliance transcript
                                                   (transcripts.BatchTranscript JSON)
``P:call:{<sid>}:quality``             string      live-vs-batch WER per track
                                                   (transcripts.CallQuality JSON)
``P:call:{<sid>}:redactions``          string      spans masked and silenced by the batch pass
                                                   (JSON list of transcripts.Redaction)
``P:call:{<sid>}:compliance``          string      the call's compliance report (JSON)
``P:call:{<sid>}:alerts``              hash        ``<final id>|<rule>`` -> events.Alert JSON (live
                                                   alerts, each raised once per rule and final)
``P:call:{<sid>}:deleted``             string      tombstone of a call erased by ``DELETE /calls/{sid}``
                                                   (the unix time it was erased; no call data). Every
                                                   writer of the call checks it in the call's slot,
                                                   so nothing late brings the call back; it keeps
                                                   the retention TTL
``P:{calls}:active``                   zset        CallSids of calls in progress, scored by start time
``P:{calls}:recent``                   zset        CallSids of ended calls, scored by end time
                                                   (trimmed to the retention window)
``P:{calls}:flagged``                  zset        CallSids whose live transcript diverges, by WER
``P:{calls}:compliance``               zset        CallSids with a compliance report, by report time
                                                   (trimmed to the retention window)
``P:{calls}:compliance:failed``        zset        the same for the reports that failed a rule
``P:search:{<word>}``                  zset        CallSids whose finals said ``<word>``, scored by
                                                   when they last did (the search index: one slot
                                                   per word; bridge/store/search.py)
``P:{jobs}:recordings``                stream      recording jobs (flat string fields, jobs.RecordingJob)
``P:{jobs}:recordings:dead``           stream      recording jobs that failed too often
``P:{jobs}:recordings:attempts``       hash        recording job entry id -> failed attempts so far
``P:{jobs}:recordings:retry``          zset        job entry ids waiting for a retry, scored by due time
``P:{webhooks}:events``                stream      webhook deliveries, one entry per event and URL
                                                   (flat string fields, webhooks.Delivery)
``P:{webhooks}:events:dead``           stream      webhook deliveries that failed too often
``P:{webhooks}:events:attempts``       hash        delivery entry id -> failed attempts so far
``P:{webhooks}:events:retry``          zset        delivery entry ids waiting for a retry, by due time
``P:live:<sid>``                       channel     pub/sub: the call's live events (events.LiveEvent)
``P:live:calls``                       channel     pub/sub: call_started / call_ended of every call
``P:control:commit``                   channel     pub/sub: manual commits routed to the call's instance
``P:control:commit:<instance>``        channel     pub/sub: the answers to one instance's routed commits
=====================================  ==========  ==================================================

Consumer group of the recording stream: ``recording-workers`` (:attr:`Keys.recordings_group`); of the
webhook stream: ``webhook-senders`` (:attr:`Keys.webhooks_group`). Both streams are driven by
:class:`bridge.store.jobs.JobQueue` over their :class:`QueueKeys`.
Every ``P:call:{<sid>}*`` key gets the retention TTL when the call ends (transcripts are personal data).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class QueueKeys:
    """The keys of one at-least-once queue (a stream with a consumer group), all in one slot."""

    stream: str
    group: str
    #: stream: entries that failed too often, with the reason.
    dead: str
    #: hash: entry id -> failed attempts so far.
    attempts: str
    #: zset: entry ids waiting for a retry, scored by due time (unix seconds).
    retry: str


class Keys:
    """Key names under one prefix."""

    recordings_group = "recording-workers"
    webhooks_group = "webhook-senders"

    def __init__(self, prefix: str = "bridge") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"key prefix {prefix!r} must not contain braces (they are Redis Cluster hash tags)")
        self.prefix = prefix.rstrip(":")

    # -- one call: every key hash-tagged with its CallSid ------------------------------------------

    def call(self, call_sid: str) -> str:
        """hash: the call record. Every other key of the call starts with this name (same slot)."""
        return f"{self.prefix}:call:{{{call_sid}}}"

    def streams(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:streams"

    def live_streams(self, call_sid: str) -> str:
        """set: StreamSids of the call's streams that have not ended (see :mod:`bridge.store.streams`)."""
        return f"{self.call(call_sid)}:live_streams"

    def finals(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:finals"

    def final_ids(self, call_sid: str) -> str:
        return f"{self.call(call_sid)}:final_ids"

    def batch_transcript(self, call_sid: str) -> str:
        """string: the call's compliance transcript (transcripts.BatchTranscript JSON)."""
        return f"{self.call(call_sid)}:batch"

    def quality(self, call_sid: str) -> str:
        """string: live-vs-batch WER of the call, per track (transcripts.CallQuality JSON)."""
        return f"{self.call(call_sid)}:quality"

    def redactions(self, call_sid: str) -> str:
        """string: spans masked and silenced by the batch pass (JSON list of transcripts.Redaction)."""
        return f"{self.call(call_sid)}:redactions"

    def compliance(self, call_sid: str) -> str:
        """string: the call's compliance report (JSON), written after the batch pass."""
        return f"{self.call(call_sid)}:compliance"

    def alerts(self, call_sid: str) -> str:
        """hash: ``<final id>|<rule>`` -> the live alert raised for that final (events.Alert JSON)."""
        return f"{self.call(call_sid)}:alerts"

    def tombstone(self, call_sid: str) -> str:
        """string: the call was erased (not one of :meth:`call_keys`: it outlives them, holding no data)."""
        return f"{self.call(call_sid)}:deleted"

    def call_keys(self, call_sid: str) -> list[str]:
        """Every key that holds data of one call (they share its retention, and its slot)."""
        return [
            self.call(call_sid),
            self.streams(call_sid),
            self.live_streams(call_sid),
            self.finals(call_sid),
            self.final_ids(call_sid),
            self.batch_transcript(call_sid),
            self.quality(call_sid),
            self.redactions(call_sid),
            self.compliance(call_sid),
            self.alerts(call_sid),
        ]

    # -- the call indexes: one slot ({calls}) ------------------------------------------------------

    @property
    def _calls(self) -> str:
        return f"{self.prefix}:{{calls}}"

    @property
    def active_calls(self) -> str:
        return f"{self._calls}:active"

    @property
    def recent_calls(self) -> str:
        return f"{self._calls}:recent"

    @property
    def flagged_calls(self) -> str:
        """zset: CallSids whose live transcript diverges from the batch one, scored by WER."""
        return f"{self._calls}:flagged"

    @property
    def compliance_calls(self) -> str:
        """zset: CallSids with a compliance report, scored by when it was made (unix seconds)."""
        return f"{self._calls}:compliance"

    @property
    def compliance_failed(self) -> str:
        """zset: CallSids whose compliance report failed a rule, scored by when it was made."""
        return f"{self._calls}:compliance:failed"

    @property
    def call_indexes(self) -> list[str]:
        """Every index of calls (zsets of CallSids): an erased call leaves every one of them."""
        return [self.active_calls, self.recent_calls, self.flagged_calls, self.compliance_calls, self.compliance_failed]

    # -- the search index: one slot per word ({<word>}) ------------------------------------------

    def search_term(self, word: str) -> str:
        """zset: CallSids that said ``word`` (a lower-case word without braces), by when they last did."""
        return f"{self.prefix}:search:{{{word}}}"

    # -- the recording jobs queue: one slot ({jobs}) -----------------------------------------------

    @property
    def recordings(self) -> str:
        return f"{self.prefix}:{{jobs}}:recordings"

    @property
    def recordings_dead(self) -> str:
        return f"{self.recordings}:dead"

    @property
    def recordings_attempts(self) -> str:
        """hash: recording job entry id -> failed attempts so far."""
        return f"{self.recordings}:attempts"

    @property
    def recordings_retry(self) -> str:
        """zset: recording job entry ids waiting for a retry, scored by due time (unix seconds)."""
        return f"{self.recordings}:retry"

    @property
    def recording_queue(self) -> QueueKeys:
        return QueueKeys(self.recordings, self.recordings_group, self.recordings_dead, self.recordings_attempts,
                         self.recordings_retry)  # fmt: skip

    # -- the webhook outbox: one slot ({webhooks}) -------------------------------------------------

    @property
    def webhooks(self) -> str:
        """stream: webhook deliveries (one entry per event and receiver URL)."""
        return f"{self.prefix}:{{webhooks}}:events"

    @property
    def webhook_queue(self) -> QueueKeys:
        w = self.webhooks
        return QueueKeys(w, self.webhooks_group, f"{w}:dead", f"{w}:attempts", f"{w}:retry")

    # -- channels (not keys) -----------------------------------------------------------------------

    def channel(self, call_sid: str) -> str:
        return f"{self.prefix}:live:{call_sid}"

    @property
    def calls_channel(self) -> str:
        return f"{self.prefix}:live:calls"

    @property
    def commit_channel(self) -> str:
        """channel: manual commits for calls another instance carries (every instance listens)."""
        return f"{self.prefix}:control:commit"

    def commit_replies(self, instance: str) -> str:
        """channel: the answers to one instance's routed commits."""
        return f"{self.prefix}:control:commit:{instance}"

    def pattern(self) -> str:
        """SCAN pattern matching every key under this prefix (tests, admin cleanup)."""
        return f"{self.prefix}:*"


__all__ = ["Keys", "QueueKeys"]
