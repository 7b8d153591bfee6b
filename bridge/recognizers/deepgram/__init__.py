"""Deepgram: live client (:mod:`.live`), its wire messages (:mod:`.wire`), pre-recorded batch engine (:mod:`.batch`)."""
