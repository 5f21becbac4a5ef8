"""The server's model thread: every live stream's audio in, one batched step of all streams with a chunk ready per
round, frames out through callbacks.

A round: take the audio (and "end") messages that arrived, encode and buffer each stream's audio (the pieces that
arrived during the last step joined into one), then run the next
chunk of every stream that has one ready in one batched call (`TalkingHeadPipeline.step`: one rollout over their
caches, one VAE decode). A stream with a backlog (a client that sent a minute of audio at once) gets one chunk per
round like every other, so it never holds up the others' next chunk. A stream whose audio has ended and whose last
chunk ran is finished and leaves; streams join and leave between rounds. The first chunks of streams that just
started run (and are delivered) before the others' chunks, so joining a busy server costs a new stream at most one
round of waiting before its first frames, not two.

Callbacks run on this thread and must only hand the data over (e.g. `loop.call_soon_threadsafe`):
`on_frames(uint8 (F, R, R, 3))` for each chunk's frames, `on_done()` after the last frames, `on_error(exception)`
when the stream cannot go on (bad audio, or a failed step: a RestError is the client's input, anything else a bug).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)
END = None  # the message "no more audio"


@dataclass(eq=False)
class _Entry:
    stream: object  # a TalkingHeadPipeline.StreamSession
    on_frames: Callable[[np.ndarray], None]
    on_done: Callable[[], None]
    on_error: Callable[[BaseException], None]


class StreamBatcher:
    """Runs the streams of `pipe` in one daemon thread, batched (module docstring). `start()` it, then `add` streams,
    `push` their audio, `end` them; `remove` a stream whose client left; `stop()` at shutdown."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._cond = threading.Condition()
        self._inbox: list[tuple[_Entry, np.ndarray | None]] = []
        self._entries: dict[int, _Entry] = {}  # id(stream) -> entry; touched under the lock
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="rest-batcher", daemon=True)
        self.steps = 0  # batched steps run (a round runs one, or two when streams are starting)
        self.largest_batch = 0

    def start(self) -> StreamBatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ---------------------------------------------------------------- any thread
    def add(self, stream, on_frames, on_done, on_error) -> None:
        with self._cond:
            self._entries[id(stream)] = _Entry(stream, on_frames, on_done, on_error)

    def push(self, stream, samples: np.ndarray) -> None:
        self._send(stream, samples)

    def end(self, stream) -> None:
        self._send(stream, END)

    def remove(self, stream) -> None:
        with self._cond:
            self._entries.pop(id(stream), None)

    def _send(self, stream, item) -> None:
        with self._cond:
            entry = self._entries.get(id(stream))
            if entry is None:
                raise RuntimeError("this stream is not running here (add it first)")
            self._inbox.append((entry, item))
            self._cond.notify()

    # ---------------------------------------------------------------- the model thread
    def _loop(self) -> None:
        ready: list[_Entry] = []
        while True:
            with self._cond:
                while not self._inbox and not ready and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                inbox, self._inbox = self._inbox, []
                live = set(self._entries.values())
            for entry, items in _coalesced(inbox):
                if entry in live:
                    self._take(entry, items, live)
            ready = [e for e in live if e.stream.has_chunk]
            starting = [e for e in ready if e.stream.frames_out == 0]  # a new stream's first frames go out first
            for group in (starting, [e for e in ready if e.stream.frames_out > 0]):
                if group:
                    self._step(group, live)
            for entry in [e for e in live if e.stream.audio_ended and not e.stream.has_chunk]:
                live.discard(entry)
                self._finish(entry)
            ready = [e for e in live if e.stream.has_chunk]

    def _take(self, entry: _Entry, items: list, live: set) -> None:
        try:
            for item in items:
                if item is END:
                    entry.stream.end_audio()
                else:
                    entry.stream.feed(item)
        except Exception as err:  # noqa: BLE001 (reported to that stream only)
            self._fail(entry, err, live)

    def _step(self, ready: list[_Entry], live: set) -> None:
        try:
            frames = self.pipe.step([e.stream for e in ready])
        except Exception as err:  # noqa: BLE001 (a failed step ends the streams in it; the others go on)
            log.exception("batched step of %d streams failed", len(ready))
            for entry in ready:
                self._fail(entry, err, live)
            return
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(ready))
        for entry, chunk in zip(ready, frames, strict=True):
            if len(chunk):
                self._report(entry.on_frames, chunk)

    def _finish(self, entry: _Entry) -> None:
        """A stream whose every chunk ran: close it and say so."""
        self._forget(entry)
        try:
            rest = entry.stream.finish()  # no frames left: every chunk ran in a step
            if len(rest):
                self._report(entry.on_frames, rest)
        except Exception as err:  # noqa: BLE001
            self._report(entry.on_error, err)
            return
        self._report(entry.on_done)

    def _fail(self, entry: _Entry, err: BaseException, live: set) -> None:
        self._forget(entry)
        live.discard(entry)
        self._report(entry.on_error, err)

    def _forget(self, entry: _Entry) -> None:
        with self._cond:
            self._entries.pop(id(entry.stream), None)

    @staticmethod
    def _report(callback: Callable, *args) -> None:
        try:
            callback(*args)
        except Exception:  # a callback's failure must not stop the thread that runs every stream
            log.exception("stream callback failed")


def _coalesced(inbox: list[tuple[_Entry, np.ndarray | None]]) -> list[tuple[_Entry, list]]:
    """The round's messages by stream, in order, each stream's consecutive audio pieces joined: the audio encoder's
    streaming step costs about as much for 40 ms as for 160 ms (4.3 vs 5.8 ms on 2 cores), and its features do not
    depend on how the audio is split."""
    by_entry: dict[_Entry, list] = {}
    for entry, item in inbox:
        items = by_entry.setdefault(entry, [])
        if item is not END and items and items[-1] is not END:
            items[-1] = np.concatenate([items[-1], item])
        else:
            items.append(item)
    return list(by_entry.items())


__all__ = ["StreamBatcher"]
