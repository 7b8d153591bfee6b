"""Phrase search over stored transcripts, with an index kept as finals are written.

The index is one sorted set per word (``P:search:{<word>}``, :meth:`Keys.search_term`): the CallSids
that said it, scored by when they last did (unix seconds). Writing a final adds its call to the set
of each of its words; nothing is ever scanned. A query looks only at the sets of its own words:

1. ``ZCOUNT`` of each word's set (within the horizon) picks the rarest word;
2. that word's newest :data:`CANDIDATES` calls are read, and ``ZMSCORE`` on every other word's set
   keeps those that said every word;
3. each remaining call's finals are read, newest call first, and the phrase (consecutive words of
   one speaker, possibly over several finals) is matched there, until enough calls matched.

So a query costs a few commands per word plus one read per candidate call, however many calls are
stored. Each word has its own hash tag, so the sets spread over a Redis Cluster's nodes and no
command touches two slots (pipelines are not transactions; redis-py sends each command to its node).

Sets cannot expire member by member, so the retention is kept in two ways: writes drop members older
than :meth:`SearchIndex.horizon` (retention plus the longest call) and refresh the set's TTL to it,
and a query verifies every candidate against the call's own finals, which expire with the call: a
call past its retention, or deleted, is never returned (and is dropped from the sets it was found in).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence

import msgspec

from bridge import events
from bridge.store.client import StoreBase, text

#: Longest word indexed: longer ones are cut (in the index and in queries alike).
MAX_TERM = 40
#: Calls a query considers at most (newest first, by when they last said its rarest word).
CANDIDATES = 500
#: A call is assumed to last at most this long: members older than retention plus this are trimmed.
LONGEST_CALL_SECONDS = 6 * 3600
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_BATCH = 25


def terms(text_: str) -> list[str]:
    """The words of ``text_`` as the index spells them: lower case, letters and digits, in order."""
    return [w[:MAX_TERM] for w in _WORD.findall(text_.casefold())]


class SearchSegment(msgspec.Struct, kw_only=True):
    """Where a call says the phrase: the finals it spans (one speaker), and their text."""

    track: str
    start: float
    end: float
    text: str
    #: Seq of the first final of the match (the live view's position).
    seq: int


class CallMatch(msgspec.Struct, kw_only=True):
    call_sid: str
    #: When the call last said the query's rarest word (unix seconds).
    said_at: float
    segments: list[SearchSegment]


def _match(phrase: Sequence[str], finals: Iterable[events.Final]) -> list[SearchSegment]:
    """The segments of ``finals`` (in audio order) where one speaker says ``phrase``, in audio order."""
    by_track: dict[str, list[tuple[str, events.Final]]] = {}
    for final in finals:
        by_track.setdefault(final.track, []).extend((w, final) for w in terms(final.text))
    found: list[SearchSegment] = []
    n = len(phrase)
    for track, words in by_track.items():
        i = 0
        while i + n <= len(words):
            if all(words[i + j][0] == phrase[j] for j in range(n)):
                spanned: list[events.Final] = []
                for _, final in words[i : i + n]:
                    if not spanned or spanned[-1] is not final:
                        spanned.append(final)
                found.append(SearchSegment(
                    track=track, start=spanned[0].start, end=spanned[-1].end,
                    text=" ".join(f.text for f in spanned), seq=spanned[0].seq,
                ))  # fmt: skip
                i += n
            else:
                i += 1
    found.sort(key=lambda s: (s.start, s.track))
    return found


def _decoded(docs: Iterable[bytes | str]) -> Iterable[events.Final]:
    """The finals of stored documents, skipping any that do not parse (never fail a search on one)."""
    for doc in docs:
        try:
            yield events.decode_final(doc)
        except msgspec.MsgspecError:
            continue


class SearchIndex(StoreBase):
    """The word index of stored finals, and phrase search over it."""

    @property
    def horizon(self) -> int:
        """Seconds a word's set keeps a call after it last said the word."""
        return max(1, int(self.retention_seconds)) + LONGEST_CALL_SECONDS

    async def index_final(self, final: events.Final, *, now: float | None = None) -> None:
        """Add the final's call to the set of each of its words (idempotent: a retry changes nothing)."""
        words = set(terms(final.text))
        if not words:
            return
        at = time.time() if now is None else now
        async with self.client.pipeline(transaction=False) as pipe:
            for word in sorted(words):
                key = self.keys.search_term(word)
                pipe.zadd(key, {final.call_sid: at}, gt=True)
                pipe.zremrangebyscore(key, "-inf", f"({at - self.horizon}")
                pipe.expire(key, self.horizon)
            await pipe.execute()

    async def search(
        self, query: str, *, limit: int = 20, allowed: set[str] | None = None, now: float | None = None
    ) -> list[CallMatch]:
        """Calls whose finals say ``query`` (as a phrase), the most recently said first; at most ``limit``.

        ``allowed``: the only CallSids that may be returned (a token limited to some calls).
        """
        phrase = terms(query)
        words = sorted(set(phrase))
        if not words or limit < 1:
            return []
        floor = (time.time() if now is None else now) - self.horizon
        async with self.client.pipeline(transaction=False) as pipe:
            for word in words:
                pipe.zcount(self.keys.search_term(word), floor, "+inf")
            counts = [int(c) for c in await pipe.execute()]
        if min(counts) == 0:
            return []
        rarest = words[counts.index(min(counts))]
        rarest_key = self.keys.search_term(rarest)
        if allowed is not None and len(allowed) <= CANDIDATES:
            # A token limited to a few calls: look those up, however long ago they said it.
            sids = sorted(allowed)
            found = await self.client.zmscore(rarest_key, sids) if sids else []
            candidates = sorted(((sid, float(score)) for sid, score in zip(sids, found, strict=True)
                                 if score is not None and float(score) >= floor), key=lambda c: -c[1])  # fmt: skip
        else:
            newest = await self.client.zrevrangebyscore(rarest_key, "+inf", floor, start=0, num=CANDIDATES,
                                                         withscores=True)  # fmt: skip
            candidates = [(text(pair[0]), float(pair[1])) for pair in newest]
            if allowed is not None:
                candidates = [(sid, score) for sid, score in candidates if sid in allowed]
        others = [w for w in words if w != rarest]
        if others and candidates:
            sids = [sid for sid, _ in candidates]
            async with self.client.pipeline(transaction=False) as pipe:
                for word in others:
                    pipe.zmscore(self.keys.search_term(word), sids)
                scores = await pipe.execute()
            candidates = [c for i, c in enumerate(candidates) if all(s[i] is not None for s in scores)]
        matches: list[CallMatch] = []
        for first in range(0, len(candidates), _BATCH):
            batch = candidates[first : first + _BATCH]
            async with self.client.pipeline(transaction=False) as pipe:
                for sid, _ in batch:
                    pipe.lrange(self.keys.finals(sid), 0, -1)
                    pipe.exists(self.keys.call(sid))
                raw = await pipe.execute()
            gone: list[str] = []
            for (sid, said_at), docs, exists in zip(batch, raw[0::2], raw[1::2], strict=True):
                if not docs and not exists:
                    gone.append(sid)
                    continue
                finals = sorted(_decoded(docs), key=lambda f: (f.start, f.end, f.id))
                segments = _match(phrase, finals)
                if segments:
                    matches.append(CallMatch(call_sid=sid, said_at=said_at, segments=segments))
            if gone:
                await self._forget(gone, words)
            if len(matches) >= limit:
                break
        return matches[:limit]

    async def remove_call(self, call_sid: str) -> None:
        """Take a call out of the index (``DELETE /calls/{sid}``): call it before the call's finals go.

        Called after them, the call's words stay in their sets until a query finds the call gone or its
        members age out; it is never returned either way.
        """
        docs = await self.client.lrange(self.keys.finals(call_sid), 0, -1)
        words = {w for f in _decoded(docs) for w in terms(f.text)}
        await self._forget([call_sid], words)

    async def _forget(self, call_sids: list[str], words: Iterable[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for word in sorted(set(words)):
                pipe.zrem(self.keys.search_term(word), *call_sids)
            if len(pipe):
                await pipe.execute()


__all__ = ["CANDIDATES", "LONGEST_CALL_SECONDS", "MAX_TERM", "CallMatch", "SearchIndex", "SearchSegment", "terms"]
