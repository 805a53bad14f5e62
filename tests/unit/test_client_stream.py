"""A followed job stream hands its messages and errors through, and Ctrl-C reaches the caller while the stream is quiet."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from kdmkb.services.client import interruptible


class Cancelled(grpc.RpcError):
    pass


class Stream:
    """A response stream that sends ``messages``, then nothing until cancelled (a job between rounds), then ends as gRPC does."""

    def __init__(self, *messages) -> None:
        self.messages = messages
        self.cancelled = threading.Event()

    def __iter__(self):
        yield from self.messages
        self.cancelled.wait()
        raise Cancelled()

    def cancel(self) -> None:
        self.cancelled.set()


def test_messages_then_the_streams_error_reach_the_caller():
    stream = Stream("first", "second")
    events = interruptible(stream)
    assert [next(events), next(events)] == ["first", "second"]
    stream.cancel()
    with pytest.raises(Cancelled):
        next(events)


def test_ctrl_c_interrupts_a_quiet_stream_at_once():
    stream = Stream()
    safety = threading.Timer(10, stream.cancel)  # a broken follower ends with Cancelled instead of hanging the suite
    safety.start()
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in interruptible(stream):
                pass
        assert time.monotonic() - started < 2
    finally:
        safety.cancel()
        stream.cancel()
