"""Streaming recognizers: one interface (:mod:`.base`), one resilience layer (:mod:`.resilience`) around
every vendor client (:mod:`.deepgram`, :mod:`.elevenlabs`; the embedded recognizer speaks Deepgram's
protocol), and the settings-to-client step (:mod:`.factory`)."""
