"""The batch compliance pass: after a call, its recording transcribed again with the most accurate
settings, and the live transcript judged against that.

:mod:`.worker` consumes recording jobs; :mod:`.engine` picks an engine (embedded Whisper in
:mod:`.whisper` over :mod:`.packing`, or a vendor's batch API); :mod:`.quality` computes the
live-vs-batch WER; :mod:`.cli` is ``bridge batch`` for backfills.
"""
