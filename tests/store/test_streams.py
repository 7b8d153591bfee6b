"""The call's running streams across instances: who replaces a lost stream, once, and the gaps recorded."""

from __future__ import annotations

import time

from bridge.store import Store


async def test_only_a_stream_its_instance_did_not_see_end_is_recovered_once(store: Store) -> None:
    now = time.time()
    await store.call_started("CA1", stream_sid="MZ1", tracks=["inbound"], started_at=now)
    await store.call_started("CA1", stream_sid="MZ2", tracks=["inbound"], started_at=now + 1)
    assert await store.live_stream_count("CA1") == 2
    assert not await store.claim_recovery("CA1", "MZ1")  # MZ2 still runs
    await store.stream_closed("CA1", "MZ2")  # its instance saw its stop (the call's end, a <Stop>)
    assert not await store.claim_recovery("CA1", "MZ2")
    assert await store.live_stream_count("CA1") == 0

    await store.call_started("CA1", stream_sid="MZ3", tracks=["inbound"], started_at=now + 2)
    await store.call_started("CA1", stream_sid="MZ4", tracks=["inbound"], started_at=now + 3)
    assert not await store.claim_recovery("CA1", "MZ3")
    assert await store.claim_recovery("CA1", "MZ4")  # the last one, lost with its instance: replace it
    assert not await store.claim_recovery("CA1", "MZ4")  # Twilio's retry of the same callback
    await store.call_started("CA1", stream_sid="MZ5", tracks=["inbound"], started_at=now + 4)  # the replacement
    await store.update_call("CA1", {"call_status": "completed"})
    assert not await store.claim_recovery("CA1", "MZ5")  # the call is over: nothing to replace

    await store.call_started("CA2", stream_sid="MZ6", tracks=["inbound"], started_at=now)
    assert await store.claim_recovery("CA2", "MZ6")
    await store.release_recovery("CA2")  # the replacement could not be started
    await store.call_started("CA2", stream_sid="MZ7", tracks=["inbound"], started_at=now)
    await store.call_ended("CA2", ended_at=now + 5)
    assert not await store.claim_recovery("CA2", "MZ7")


async def test_stream_gaps_are_kept_on_the_call_record_in_order(store: Store) -> None:
    await store.call_started("CA1", stream_sid="MZ1", tracks=["inbound"], started_at=time.time())
    await store.add_stream_gap("CA1", 19.7216, 20.08)
    await store.add_stream_gap("CA1", 40.0, 41.5)
    info = await store.get_call("CA1")
    assert info is not None
    assert [(g.start, g.end) for g in info.stream_gaps] == [(19.722, 20.08), (40.0, 41.5)]
    assert "stream_gaps" not in info.extra
    await store.update_call("CA1", {"stream_gaps": "not json"})  # bad data never fails a read, nor the next gap
    assert (await store.get_call("CA1")).stream_gaps == []  # type: ignore[union-attr]
    await store.add_stream_gap("CA1", 50.0, 51.0)
    assert [(g.start, g.end) for g in (await store.get_call("CA1")).stream_gaps] == [(50.0, 51.0)]  # type: ignore[union-attr]


async def test_an_erased_call_gets_no_gap_and_no_recovery(store: Store) -> None:
    await store.call_started("CA3", stream_sid="MZ1", tracks=["inbound"], started_at=time.time())
    await store.delete_call("CA3")
    await store.add_stream_gap("CA3", 1.0, 2.0)
    assert not await store.claim_recovery("CA3", "MZ1")
    assert await store.get_call("CA3") is None
    assert [k for k in store.keys.call_keys("CA3") if await store.client.exists(k)] == []
