"""The Twilio edge: typed wire messages (:mod:`.models`), signatures (:mod:`.auth`), the Media Streams
socket (:mod:`.media`), the HTTP webhooks (:mod:`.webhooks`), recordings (:mod:`.recordings`), and a
faithful stream replayer (:mod:`.replay`)."""
