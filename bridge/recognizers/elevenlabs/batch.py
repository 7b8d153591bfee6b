"""ElevenLabs Scribe batch (``POST /v1/speech-to-text``, multipart) as a batch engine: one transcript per
channel (``use_multi_channel``), turns cut at pauses and sentence ends
(https://elevenlabs.io/docs/api-reference/speech-to-text/convert)."""

from __future__ import annotations

import math

import httpx
import msgspec

from bridge.events import Word
from bridge.recognizers.http import HttpBatchEngine
from bridge.transcripts import EngineError, Recording, Utterance, in_order, plain, tracks_for, utterance


# The response: only the fields we read.
class _ElWord(msgspec.Struct):
    text: str
    start: float | None = None
    end: float | None = None
    type: str = "word"
    logprob: float | None = None
    channel_index: int | None = None


class _ElChunk(msgspec.Struct):
    text: str = ""
    words: list[_ElWord] = msgspec.field(default_factory=list)
    channel_index: int | None = None


class _ElResponse(msgspec.Struct):
    text: str | None = None
    words: list[_ElWord] | None = None
    channel_index: int | None = None
    transcripts: list[_ElChunk] | None = None


_SENTENCE_END = (".", "?", "!")


def _el_utterances(track: str, channel: int, words: list[_ElWord], gap: float) -> list[Utterance]:
    """Split a channel's word stream into turns at long pauses and sentence ends."""
    out: list[Utterance] = []
    cur: list[Word] = []
    confs: list[float] = []

    def close() -> None:
        if cur:
            text = " ".join(w.punctuated_word or w.word for w in cur)
            out.append(utterance(track, channel, list(cur), text, sum(confs) / len(confs)))
            cur.clear()
            confs.clear()

    for w in words:
        if w.type != "word" or w.start is None or not w.text.strip():
            continue
        if cur and w.start - cur[-1].end > gap:
            close()
        conf = math.exp(min(0.0, w.logprob)) if w.logprob is not None else 0.0
        token = w.text.strip()
        cur.append(Word(word=plain(token) or token, start=w.start, end=w.end or w.start, confidence=conf,
                        punctuated_word=token))  # fmt: skip
        confs.append(conf)
        if token.endswith(_SENTENCE_END) and gap > 0:
            close()
    close()
    return out


class ElevenLabsBatchEngine(HttpBatchEngine):
    """ElevenLabs Scribe ``POST /v1/speech-to-text`` (multipart), one transcript per channel."""

    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.elevenlabs.io",
        model: str = "scribe_v2",
        timeout: float = 600.0,
        turn_gap: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, client=client)
        self.model = model
        self.turn_gap = turn_gap

    async def transcribe(self, recording: Recording, tracks: list[str]) -> list[Utterance]:
        names = tracks_for(recording.channels, tracks)
        data = {"model_id": self.model, "timestamps_granularity": "word", "language_code": "en",
                "tag_audio_events": "false", "diarize": "false"}  # fmt: skip
        if recording.channels > 1:
            data["use_multi_channel"] = "true"
        body = await self._post(
            "/v1/speech-to-text",
            data=data,
            files={"file": ("recording.wav", recording.raw, "audio/wav")},
            headers={"xi-api-key": self.api_key},
        )
        try:
            resp = msgspec.json.decode(body, type=_ElResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"elevenlabs: unexpected response: {exc}") from None
        chunks = resp.transcripts or [_ElChunk(text=resp.text or "", words=resp.words or [],
                                               channel_index=resp.channel_index)]  # fmt: skip
        out: list[Utterance] = []
        for i, chunk in enumerate(chunks):
            by_channel: dict[int, list[_ElWord]] = {}
            for w in chunk.words:
                ch = w.channel_index if w.channel_index is not None else (chunk.channel_index or i)
                by_channel.setdefault(ch, []).append(w)
            for ch, words in by_channel.items():
                if 0 <= ch < len(names):
                    out += _el_utterances(names[ch], ch, words, self.turn_gap)
        return in_order(out)




__all__ = ["ElevenLabsBatchEngine"]
