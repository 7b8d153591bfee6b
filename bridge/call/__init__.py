"""One call: its session (:mod:`.session`), each track's pipeline (:mod:`.pipeline`), its recording
(:mod:`.recording`), and every call of this instance (:mod:`.manager`)."""
