"""The log writer thread (bitinglip/logs.py `LineWriter`) with a real formatter and an in-memory stream:
every record waiting goes out with one write, in order; a record that cannot be rendered, or a stream
that fails, does not end it; stopping writes what is still queued."""

from __future__ import annotations

import io
import logging
import queue
import threading

from bitinglip.logs import LineWriter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, args or None, None)


def _writer(records: queue.Queue[logging.LogRecord], stream: io.StringIO) -> LineWriter:
    writer = LineWriter(records, logging.Formatter("%(message)s"))
    writer.stream = stream
    return writer


def test_waiting_records_go_out_together_in_order_and_stop_drains() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    stream = CountingStream()
    for i in range(300):
        records.put(_record("line %d", i))
    writer = _writer(records, stream)
    writer.start()
    writer.stop()
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(300)]
    assert stream.writes == 1  # 300 lines waiting: one write
    assert not writer.is_alive()


def test_an_unrenderable_record_is_named_and_the_rest_are_written() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue()
    stream = CountingStream()
    writer = _writer(records, stream)
    writer.start()
    records.put(_record("before"))
    records.put(_record("%d apples", "not a number"))  # formatting it raises
    records.put(_record("after"))
    writer.stop()
    assert stream.getvalue().splitlines() == ["before", "[unrenderable log record from t: TypeError]", "after"]


def test_a_failing_stream_does_not_end_the_writer() -> None:
    class Broken(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.failed = threading.Event()

        def write(self, text: str) -> int:
            if not self.failed.is_set():
                self.failed.set()
                raise RuntimeError("the pipe's reader went away")
            return super().write(text)

    records: queue.Queue[logging.LogRecord] = queue.Queue()
    stream = Broken()
    writer = _writer(records, stream)
    records.put(_record("lost with the failed write"))
    writer.start()
    assert stream.failed.wait(5)
    records.put(_record("written later"))
    writer.stop()
    assert "written later" in stream.getvalue()
