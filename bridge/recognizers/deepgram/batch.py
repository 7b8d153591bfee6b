"""Deepgram pre-recorded (``POST /v1/listen``) as a batch engine: one transcript per channel
(``multichannel=true``), turns from Deepgram's ``utterances``
(https://developers.deepgram.com/docs/multichannel-vs-diarization,
https://developers.deepgram.com/docs/utterances)."""

from __future__ import annotations

import httpx
import msgspec

from bridge.events import Word
from bridge.recognizers.http import HttpBatchEngine
from bridge.transcripts import EngineError, Recording, Utterance, in_order, tracks_for, utterance


# The response: only the fields we read.
class _DgWord(msgspec.Struct):
    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None


class _DgAlternative(msgspec.Struct):
    transcript: str = ""
    confidence: float = 0.0
    words: list[_DgWord] = msgspec.field(default_factory=list)


class _DgChannel(msgspec.Struct):
    alternatives: list[_DgAlternative] = msgspec.field(default_factory=list)


class _DgUtterance(msgspec.Struct):
    start: float
    end: float
    transcript: str
    channel: int = 0
    confidence: float = 0.0
    words: list[_DgWord] = msgspec.field(default_factory=list)


class _DgResults(msgspec.Struct):
    channels: list[_DgChannel] = msgspec.field(default_factory=list)
    utterances: list[_DgUtterance] | None = None


class _DgResponse(msgspec.Struct):
    results: _DgResults


def _dg_words(words: list[_DgWord]) -> list[Word]:
    return [
        Word(word=w.word, start=w.start, end=w.end, confidence=w.confidence, punctuated_word=w.punctuated_word)
        for w in words
    ]


class DeepgramBatchEngine(HttpBatchEngine):
    """Deepgram pre-recorded ``POST /v1/listen`` with one transcript per channel (``multichannel``)."""

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = "https://api.deepgram.com",
        model: str = "nova-3",
        timeout: float = 600.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, timeout=timeout, client=client)
        self.model = model

    async def transcribe(self, recording: Recording, tracks: list[str]) -> list[Utterance]:
        names = tracks_for(recording.channels, tracks)
        params = {
            "model": self.model, "multichannel": "true", "utterances": "true",
            "punctuate": "true", "smart_format": "true", "language": "en",
        }  # fmt: skip
        body = await self._post(
            "/v1/listen",
            params=params,
            content=recording.raw,
            headers={"Authorization": f"Token {self.api_key}", "Content-Type": "audio/wav"},
        )
        try:
            resp = msgspec.json.decode(body, type=_DgResponse)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineError(f"deepgram: unexpected response: {exc}") from None
        out: list[Utterance] = []
        if resp.results.utterances is not None:
            for u in resp.results.utterances:
                if 0 <= u.channel < len(names) and u.transcript.strip():
                    out.append(utterance(names[u.channel], u.channel, _dg_words(u.words), u.transcript, u.confidence))
        else:  # no utterances: one utterance per channel from its best alternative
            for ch, c in enumerate(resp.results.channels[: len(names)]):
                if c.alternatives and c.alternatives[0].transcript.strip():
                    alt = c.alternatives[0]
                    out.append(utterance(names[ch], ch, _dg_words(alt.words), alt.transcript, alt.confidence))
        return in_order(out)




__all__ = ["DeepgramBatchEngine"]
