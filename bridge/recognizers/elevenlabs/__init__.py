"""ElevenLabs Scribe: realtime client (:mod:`.live`), its wire messages (:mod:`.wire`), batch engine (:mod:`.batch`)."""
