"""The server's reads from the Grid: a SuperLink's passing internal error is tried again, a
lasting one or any other error is not hidden."""

from __future__ import annotations

import httpx
import pytest

from fedper import link
from fedper.link import read_again


class FlakyRead:
    """A Grid read that fails `failures` times with `status`, then answers."""

    def __init__(self, failures: int, status: int = 500) -> None:
        self.failures, self.status, self.calls = failures, status, 0

    def __call__(self, ids: list[str]) -> list[str]:
        self.calls += 1
        if self.calls <= self.failures:
            request = httpx.Request("POST", "http://127.0.0.1/pull")
            response = httpx.Response(self.status, request=request, text="database is locked")
            raise httpx.HTTPStatusError("internal error", request=request, response=response)
        return [f"reply to {i}" for i in ids]


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(link, "READ_RETRY_SECONDS", (0.0, 0.0, 0.0))


def test_a_superlink_that_is_busy_for_a_moment_is_asked_again():
    read = FlakyRead(failures=2)
    assert read_again(read, ["a", "b"]) == ["reply to a", "reply to b"]
    assert read.calls == 3


def test_an_internal_error_that_lasts_goes_up_after_the_last_try():
    read = FlakyRead(failures=10)
    with pytest.raises(httpx.HTTPStatusError):
        read_again(read, ["a"])
    assert read.calls == 4  # the first try and one after each of the three waits


def test_other_errors_are_not_tried_again():
    read = FlakyRead(failures=1, status=403)
    with pytest.raises(httpx.HTTPStatusError):
        read_again(read, ["a"])
    assert read.calls == 1
