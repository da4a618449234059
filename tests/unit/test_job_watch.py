"""The pieces behind watching a job, on their own: the worker's token log (a compute thread writing,
followers on the loop), the Last-Event-ID rule, the per-user stream count, and the names batches show."""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.jobs.watch import WatchSlots, resume_after
from bitinglip.errors import InvalidRequest, RateLimited
from bitinglip.worker.tokens import JobTokens, TokenLog
from flows.batch import BatchOutcome, file_label, summary_rows


async def _collect(log: TokenLog, after: int = 0) -> list[tuple[int, str]]:
    return [piece async for piece in log.follow(after) if piece is not None]


def test_followers_get_every_piece_from_a_writing_thread_in_order_and_stop_at_close() -> None:
    async def scenario() -> None:
        log = TokenLog(asyncio.get_running_loop())
        log.add("before ")  # written before anyone follows: still read
        early, late = asyncio.create_task(_collect(log)), asyncio.create_task(_collect(log, after=2))
        await asyncio.sleep(0)
        writer = threading.Thread(target=lambda: [log.add(f"{i} ") for i in range(200)])
        writer.start()
        await asyncio.to_thread(writer.join)
        log.close()
        got, tail = await early, await late
        assert [n for n, _ in got] == list(range(1, 202))
        assert "".join(text for _, text in got) == "before " + "".join(f"{i} " for i in range(200))
        assert tail == got[2:]  # a follower resuming after the second piece

    asyncio.run(scenario())


def test_a_restarted_row_does_not_repeat_what_was_recorded() -> None:
    async def scenario() -> None:
        log = TokenLog(asyncio.get_running_loop())
        for piece in ("Once", " upon", " a"):
            log.add(piece)
        log.restart()  # the engine restarts the row: the same text comes again from the start
        for piece in ("On", "ce up", "on a", " time", ""):
            log.add(piece)
        log.close()
        assert await _collect(log) == [(1, "Once"), (2, " upon"), (3, " a"), (4, " time")]

    asyncio.run(scenario())


def test_job_tokens_keep_a_retried_jobs_log_and_forget_it_at_close() -> None:
    async def scenario() -> None:
        tokens = JobTokens()
        first = tokens.open("job-1")
        first.add("abc")
        again = tokens.open("job-1")  # a retry under the same claim
        again.add("abcdef")
        assert again is first and tokens.get("job-1") is first
        tokens.close("job-1")
        assert tokens.get("job-1") is None and await _collect(first) == [(1, "abc"), (2, "def")]
        tokens.close("job-1")  # closing twice is harmless

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("header", "after"), [(None, 0), ("", 0), ("  ", 0), ("0", 0), ("7", 7), (" 12 ", 12), ("999999999", 999999999)]
)
def test_last_event_id_is_a_number_of_pieces(header: str | None, after: int) -> None:
    assert resume_after(header) == after


@pytest.mark.parametrize("header", ["abc", "-1", "+1", "1.0", "1e3", "0x1f", "1" * 10, "9" * 5000, "١٢", "1 2"])
def test_a_last_event_id_the_stream_never_sent_is_refused(header: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        resume_after(header)
    assert refused.value.param == "Last-Event-ID"


def test_stream_slots_are_taken_at_once_per_user_and_given_back_once() -> None:
    slots = WatchSlots(limit=2)
    first, second = slots.take("ada"), slots.take("ada")  # taken when asked: a burst cannot pass a check first
    with pytest.raises(RateLimited):
        slots.take("ada")
    slots.take("bob")()  # another user's streams are theirs
    first()
    first()  # released by the stream's end and by the answer's background task: counted once
    third = slots.take("ada")
    second(), third()
    assert slots.open["ada"] == 0


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("requests.jsonl", "requests.jsonl"),
        ("Q3 leads (final).jsonl", "Q3 leads _final_.jsonl"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\ada\\batch.jsonl", "batch.jsonl"),
        ("..\\Q3 «leads» <img src=x>\x07.jsonl", "Q3 _leads_ _img src_x_.jsonl"),
        ("\u202egnp.jsonl", "gnp.jsonl"),
        ("día  de   prueba.jsonl", "día de prueba.jsonl"),
        ("/srv/inbox/*.jsonl", "*.jsonl"),
        ("...", "input"),
        ("", "input"),
    ],
)
def test_a_file_name_is_shown_cleaned(name: str, label: str) -> None:
    assert file_label(name) == label


def test_a_long_file_name_is_cut_to_fit() -> None:
    label = file_label("x" * 500 + ".jsonl")
    assert len(label) == 60 and label.endswith("…")


def test_the_summary_table_has_two_columns_and_a_label_per_row() -> None:
    outcome = BatchOutcome(total=13, completed=9, failed=4, chunks_total=3, chunks_done=3, chunks_cached=1)
    rows = summary_rows(outcome, {"batch": "b-1", "input": "requests.jsonl"}, {"output_file_id": "file-1"})
    assert all(set(row) == {"item", "value"} for row in rows)
    assert {row["item"]: row["value"] for row in rows} == {
        "batch": "b-1",
        "input": "requests.jsonl",
        "requests": "13",
        "completed": "9",
        "failed": "4",
        "chunks": "3 of 3 (1 from cache)",
        "output_file_id": "file-1",
    }
