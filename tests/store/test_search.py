"""Phrase search over stored finals, on one Redis and on a real Redis Cluster (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.exceptions
from redis.cluster import key_slot

from bridge import events
from bridge.store import Keys, Store, search
from bridge.store.search import terms


def final(call_sid: str, track: events.Track, start: float, text: str) -> events.Final:
    return events.Final(call_sid=call_sid, id=events.final_id(track, start), track=track, start=start,
                        end=start + 1.0, text=text)  # fmt: skip


async def say(store: Store, call_sid: str, *lines: tuple[events.Track, float, str]) -> None:
    for track, start, text in lines:
        await store.add_final(final(call_sid, track, start, text))


def test_words_are_lower_case_letters_and_digits_in_order() -> None:
    assert terms("Hello, I'd like to CANCEL my card #4242!") == ["hello", "i'd", "like", "to", "cancel", "my",
                                                               "card", "4242"]  # fmt: skip
    assert terms("  ... --- ") == []
    assert terms("Grüße") == terms("GRÜSSE") == ["grüsse"]
    assert len(terms("x" * 500)[0]) == 40


def test_each_word_has_its_own_slot() -> None:
    keys = Keys("p")
    assert keys.search_term("cancel") == "p:search:{cancel}"
    slots = {key_slot(keys.search_term(w).encode()) for w in ["cancel", "my", "card", "refund", "hello"]}
    assert len(slots) > 1  # the index spreads over a cluster's nodes


async def test_a_phrase_is_found_where_one_speaker_says_it_across_finals(store: Store) -> None:
    await say(store, "CA1",
              ("inbound", 0.0, "Hello, I would like"), ("outbound", 1.0, "Sure."),
              ("inbound", 2.0, "to cancel my card please"), ("inbound", 9.0, "Cancel my card, yes."))  # fmt: skip
    [match] = await store.search("like to CANCEL my card")
    assert match.call_sid == "CA1"
    [segment] = match.segments
    assert (segment.track, segment.start, segment.end) == ("inbound", 0.0, 3.0)
    assert segment.text == "Hello, I would like to cancel my card please"
    assert segment.seq == 1
    [match] = await store.search("cancel my card")
    assert [(s.start, s.seq) for s in match.segments] == [(2.0, 3), (9.0, 4)]
    # Every word was said, but not as this phrase, or not by one speaker.
    assert await store.search("card cancel") == []
    assert await store.search("like sure") == []
    assert await store.search("never said") == []


async def test_newest_first_limited_and_restricted_to_allowed_calls(store: Store) -> None:
    base = time.time()
    for i in range(8):
        sid = f"CA{i}"
        await store.add_final(final(sid, "outbound", 0.0, "thank you for calling"))
        await store.index_final(final(sid, "outbound", 0.0, "thank you for calling"), now=base + i)
    found = await store.search("thank you for calling", limit=3)
    assert [m.call_sid for m in found] == ["CA7", "CA6", "CA5"]
    found = await store.search("Thank you!", allowed={"CA2", "CA4"})
    assert [m.call_sid for m in found] == ["CA4", "CA2"]


async def test_the_index_is_written_with_the_final(store: Store) -> None:
    await say(store, "CA1", ("inbound", 0.0, "refund please"))
    for word in ("refund", "please"):
        assert await store.client.zscore(store.keys.search_term(word), "CA1") is not None
        assert 0 < await store.client.ttl(store.keys.search_term(word)) <= store.horizon
    # A retried write (already stored) changes nothing.
    assert await store.add_final(final("CA1", "inbound", 0.0, "refund please")) is None
    assert await store.client.zcard(store.keys.search_term("refund")) == 1


async def test_a_call_past_its_retention_or_deleted_is_never_returned(store: Store) -> None:
    await say(store, "CA1", ("inbound", 0.0, "my account number"))
    await say(store, "CA2", ("inbound", 0.0, "my account number"))
    # Later than the horizon: the members aged out of the index.
    assert await store.search("account number", now=time.time() + store.horizon + 1) == []
    # A write that late trims them.
    await store.index_final(final("CA3", "inbound", 0.0, "account"), now=time.time() + store.horizon + 1)
    assert await store.client.zrange(store.keys.search_term("account"), 0, -1) == [b"CA3"]

    await say(store, "CA4", ("inbound", 0.0, "my account number"))
    await say(store, "CA5", ("inbound", 0.0, "my account number"))
    # CA4's keys expired (or were deleted) while its words were still indexed.
    await store.client.delete(*store.keys.call_keys("CA4"))
    assert [m.call_sid for m in await store.search("account number")] == ["CA5"]
    assert await store.client.zscore(store.keys.search_term("number"), "CA4") is None  # dropped when seen


async def test_remove_call_takes_a_call_out_of_the_index(store: Store) -> None:
    await say(store, "CA1", ("inbound", 0.0, "close my account"), ("outbound", 1.0, "of course"))
    await say(store, "CA2", ("inbound", 0.0, "close my account"))
    await store.remove_call("CA1")
    for word in ("close", "my", "account", "of", "course"):
        assert await store.client.zscore(store.keys.search_term(word), "CA1") is None
    assert [m.call_sid for m in await store.search("close my account")] == ["CA2"]
    await store.remove_call("CA9")  # a call with nothing indexed: nothing to do


async def test_candidates_are_bounded_but_a_limited_token_still_finds_its_old_calls(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "CANDIDATES", 3)
    base = time.time()
    for i in range(6):
        await store.index_final(final(f"CA{i}", "inbound", 0.0, "refund"), now=base + i)
        await store.add_final(final(f"CA{i}", "inbound", 0.0, "refund"))
    # A query considers at most CANDIDATES calls (those that said its rarest word last)...
    assert [m.call_sid for m in await store.search("refund", limit=10)] == ["CA5", "CA4", "CA3"]
    # ...but a token limited to some calls looks those up, however old.
    assert [m.call_sid for m in await store.search("refund", allowed={"CA0", "CA9"})] == ["CA0"]


async def test_an_unreadable_stored_final_does_not_fail_a_search(store: Store) -> None:
    await say(store, "CA1", ("inbound", 0.0, "open a ticket"))
    await store.client.rpush(store.keys.finals("CA1"), b"{not json")
    assert [m.call_sid for m in await store.search("open a ticket")] == ["CA1"]
    await store.remove_call("CA1")
    assert await store.search("open a ticket") == []


async def test_a_query_reads_only_the_calls_that_said_its_words_however_many_are_stored(store: Store) -> None:
    """No scan: 2000 stored calls said "thank you for calling"; a query with a rarer word reads one call."""
    decoys = [f"CA{i:04d}" for i in range(2000)]
    for first in range(0, len(decoys), 10):
        await asyncio.gather(*(store.index_final(final(sid, "outbound", 0.0, "thank you for calling"))
                               for sid in decoys[first : first + 10]))  # fmt: skip
    # Any read of a decoy's finals would now be an error (a string where the list should be).
    async with store.client.pipeline(transaction=False) as pipe:
        for sid in decoys:
            pipe.set(store.keys.finals(sid), "not a list", ex=600)
        await pipe.execute()
    await say(store, "CAtarget", ("outbound", 0.0, "Thank you for calling about the lost passport."))
    [match] = await store.search("thank you for calling about the lost passport")
    assert match.call_sid == "CAtarget"
    # The check has teeth: a query of only the common words does read decoys.
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        await store.search("thank you for calling")


async def test_a_final_of_an_erased_call_is_never_indexed(store: Store) -> None:
    await say(store, "CA1", ("inbound", 0.0, "close my account"))
    await store.remove_call("CA1")
    await store.delete_call("CA1")
    assert await store.add_final(final("CA1", "inbound", 5.0, "close my account now")) is None  # a late final
    for word in ("close", "my", "account", "now"):
        assert await store.client.zscore(store.keys.search_term(word), "CA1") is None
    assert await store.search("close my account") == []
