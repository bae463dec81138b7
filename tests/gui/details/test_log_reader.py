"""LogReader's catch-up: a follow stream that ends before its last line loses nothing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.pages.details.logs import LogQuery, LogReader
from vm_backend.engine.models import LogEntry
from vm_backend.engine.streams import log_time_key

T = "2026-11-29T04:10:00.{}Z"
LOG = [
    LogEntry("stdout", "one", T.format("1")),
    LogEntry("stdout", "two", T.format("2")),
    LogEntry("stderr", "two again", T.format("2")),  # same time as the line before
    LogEntry("stdout", "last, no newline", T.format("25")),
]


class ListStream:
    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries

    def __iter__(self) -> Any:
        return iter(self.entries)

    def close(self) -> None:
        pass


class LossyClient:
    """Its follow stream drops the last ``lost`` lines (moby/moby#43860)."""

    def __init__(self, lost: int) -> None:
        self.lost = lost
        self.calls: list[dict[str, Any]] = []

    def logs(self, _cid: str, **kwargs: Any) -> ListStream:
        self.calls.append(kwargs)
        if kwargs["follow"]:
            return ListStream(LOG[: len(LOG) - self.lost])
        since = kwargs.get("since")
        # The engine's since is inclusive; it compares times, not strings.
        keep = [
            e for e in LOG
            if since is None or (lambda k: k[0] + k[1] / 1e9)(log_time_key(e.timestamp)) >= since
        ]
        return ListStream(keep)


def read_all(client: LossyClient) -> list[str]:
    reader = LogReader(client, "c" * 64, LogQuery(None, None))  # type: ignore[arg-type]
    reader.start()
    assert reader.finished.wait(10)
    assert reader.error is None
    return [line.text for line in reader.take()]


@pytest.mark.parametrize("lost", [0, 1, 2, 4])
def test_lines_the_follow_stream_lost_are_read_once(lost: int) -> None:
    client = LossyClient(lost)
    assert read_all(client) == [e.text for e in LOG]
    assert [c["follow"] for c in client.calls] == [True, False]


def test_a_stopped_reader_does_not_catch_up() -> None:
    client = LossyClient(1)
    reader = LogReader(client, "c" * 64, LogQuery(None, None))  # type: ignore[arg-type]
    reader.stop()
    reader.start()
    assert reader.finished.wait(10)
    time.sleep(0.05)
    assert len(client.calls) <= 1
