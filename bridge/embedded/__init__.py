"""The embedded, Deepgram-compatible streaming recognizer (Whisper via CTranslate2, no network).

Entry points: :class:`bridge.embedded.server.EmbeddedConfig`, :func:`bridge.embedded.server.create_app`,
:func:`bridge.embedded.server.serve` and :func:`bridge.embedded.server.running`. Its benchmark is
``bridge bench recognizer`` (:mod:`bridge.bench.recognizer`).
"""
