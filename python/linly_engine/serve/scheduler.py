"""Continuous batching: many requests share each forward pass of the native decoder.

One thread owns the model. Every step it admits waiting requests into free KV-cache
slots (preferring the slot whose cached tokens share the longest prefix with the new
prompt, so a chat's next turn only prefills what is new), then runs one
``forward_batch`` over all active sequences: a chunk of prompt for those still
prefilling, one token for those decoding. Every weight matrix is read once per step for
all of them, which is where the throughput comes from on a bandwidth-bound CPU.
Requests that finish or whose client went away free their slot at once.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from linly_engine.engine import common_prefix
from linly_engine.generation import TokenStream
from linly_engine.model import Model
from linly_engine.sampling import SamplingParams
from linly_engine.tokenizer import Tokenizer

PREFILL_CHUNK = 256  # prompt tokens per sequence per step: bounds how long decoders wait


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is at its bound."""


@dataclass
class Request:
    """One generation in flight. ``emit`` receives ("text", str) events, then one
    ("done", finish_reason) or ("error", message); it is called from the scheduler thread."""

    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[tuple[str, Any]], None]
    extra_stop: Sequence[str] = ()
    id: int = field(default_factory=itertools.count().__next__)
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    cached_tokens: int = 0
    slot: int = -1
    stream: TokenStream | None = None
    pending: list[int] = field(default_factory=list)  # ids still to run (prompt chunks, then one token)
    cancelled: bool = False

    def cancel(self) -> None:
        """The client is gone: free the slot at the next step (thread-safe)."""
        self.cancelled = True

    @property
    def generated(self) -> int:
        return self.stream.generated if self.stream else 0

    @property
    def finish_reason(self) -> str | None:
        return self.stream.finish_reason if self.stream else None


@dataclass
class Counters:
    """What /metrics reports; written by the scheduler thread only."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    steps: int = 0
    decode_tokens_per_s: float = 0.0  # aggregate over the slots, last step


class Scheduler:
    """Owns ``model`` (built with ``slots`` > 1) and runs it in a background thread."""

    def __init__(self, model: Model, tokenizer: Tokenizer, max_queue: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_queue = max_queue
        self.slots = model.slots
        self.slot_ids: list[list[int]] = [[] for _ in range(self.slots)]  # token ids cached per slot
        self.active: dict[int, Request] = {}  # slot -> request
        self.waiting: collections.deque[Request] = collections.deque()
        self.counters = Counters()
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="linly-scheduler", daemon=True)
        self._thread.start()

    # ---- called from other threads -------------------------------------------------------
    def submit(self, req: Request) -> Request:
        with self._cv:
            if len(self.waiting) >= self.max_queue and len(self.active) >= self.slots:
                raise QueueFullError(f"all {self.slots} slots are busy and {len(self.waiting)} requests are "
                                     "waiting; retry later")
            self.waiting.append(req)
            self._cv.notify()
        return req

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def busy_slots(self) -> int:
        return len(self.active)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)

    # ---- the scheduler thread ------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self.waiting and not self.active:
                    self._cv.wait()
                if self._stop:
                    for req in list(self.active.values()) + list(self.waiting):
                        req.emit(("error", "the server is shutting down"))
                    return
                self._admit()
            self._drop_cancelled()
            if self.active:
                try:
                    self._step()
                except Exception as e:  # a bug must not hang every client: fail the batch, keep serving
                    for slot, req in list(self.active.items()):
                        self._finish(slot, req, ("error", f"internal error: {type(e).__name__}: {e}"))

    def _admit(self) -> None:
        free = [s for s in range(self.slots) if s not in self.active]
        while free and self.waiting:
            req = self.waiting.popleft()
            if req.cancelled:  # its client left while it waited
                req.emit(("done", "cancelled"))
                continue
            # the free slot whose cache shares the longest prefix with this prompt
            best, reuse = free[0], -1
            for s in free:
                n = common_prefix(self.slot_ids[s], req.prompt_ids)
                if n > reuse:
                    best, reuse = s, n
            free.remove(best)
            del self.slot_ids[best][self.model.slot_position(best):]  # in step with the cache after a failed step
            reuse = common_prefix(self.slot_ids[best], req.prompt_ids)
            reuse = min(reuse, len(req.prompt_ids) - 1)  # at least one token runs, for its logits
            self.model.truncate(reuse, best)
            del self.slot_ids[best][reuse:]
            req.slot, req.cached_tokens = best, reuse
            req.pending = req.prompt_ids[reuse:]
            req.stream = TokenStream(self.tokenizer, req.prompt_ids, req.params, self.model.config["vocab_size"],
                                     req.extra_stop)
            self.active[best] = req
            self.counters.requests += 1
            self.counters.prompt_tokens += len(req.prompt_ids)
            if req.stream.done:  # max_new_tokens == 0
                self._finish(best, req, ("done", req.stream.finish_reason))

    def _drop_cancelled(self) -> None:
        for slot, req in list(self.active.items()):
            if req.cancelled:
                req.stream.finish_reason = req.stream.finish_reason or "cancelled"
                self._finish(slot, req, ("done", "cancelled"))

    def _step(self) -> None:
        segments, reqs = [], []
        for slot, req in self.active.items():
            chunk = req.pending[:PREFILL_CHUNK]
            segments.append((slot, chunk))
            reqs.append((req, len(chunk)))
        t0 = time.perf_counter()
        logits = self.model.forward_batch(segments)
        dt = time.perf_counter() - t0
        decoding = 0
        for row, (req, n) in enumerate(reqs):
            slot = req.slot
            self.slot_ids[slot].extend(req.pending[:n])
            del req.pending[:n]
            if req.pending:  # still prefilling: no token yet
                continue
            decoding += 1
            token, text = req.stream.step(logits[row], self.slot_ids[slot])
            if req.first_token_at is None:
                req.first_token_at = time.perf_counter()
            if text:
                req.emit(("text", text))
            if token is None:
                self._finish(slot, req, ("done", req.stream.finish_reason))
            elif len(self.slot_ids[slot]) >= self.model.max_context:  # the slot is full
                tail = req.stream.end("length")
                if tail:
                    req.emit(("text", tail))
                self._finish(slot, req, ("done", "length"))
            else:
                req.pending = [token]
        self.counters.steps += 1
        if decoding and dt > 0:
            self.counters.decode_tokens_per_s = decoding / dt

    def _finish(self, slot: int, req: Request, event: tuple[str, Any]) -> None:
        self.active.pop(slot, None)
        req.finished_at = time.perf_counter()
        self.counters.generated_tokens += req.generated
        req.emit(event)
