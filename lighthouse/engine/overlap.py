"""Overlapped decode: the next decode step is launched before this one's tokens are read, so that the host's work
between two steps (reading the tokens, detokenizing, stop checks, the scheduler's update, the next step's inputs)
runs while the device computes, as vLLM v1's async scheduling does. Between two CUDA-graph replays that host work
left the H100 idle 0.4-0.6 ms a step at sparse 512K and 0.4-1.1 ms at batch 32 x 8K
(bench/results/2026-12-07_h100_session7_checks/NOTE.md).

A decode step whose rows all sample on the device alone is launched and left in flight; its tokens are copied to
the host behind it (sampling.PendingSample). At the engine's next step, if the scheduler would decode the same batch
again (`Scheduler.steady`: nothing waits, prefills or is being aborted) and every row has room for a token after
this one, the step after it is launched first, its input ids and positions advanced on the device
(ModelRunner.decode_next), and only then are the tokens in flight read and processed. Otherwise the step in flight
is read alone (drained) and the engine schedules as it does without overlap.

A row that finished when its tokens were read (a stop string, EOS) had a token made for it by the step launched
meanwhile: that token is dropped when that step is read. That step wrote the K/V of the row's last token, at a
position inside its reservation (the prompt and max_tokens positions), and blocks freed meanwhile are reused only
by work queued behind it on the same stream. A row whose token in flight is its last (max_tokens) is not given
a step after it: the step in flight is read alone. Lengths are committed as before, once a step's tokens are read.

Rows that need the host between two steps never overlap: a grammar (its mask follows the last token), penalties
(their counts), prompt-lookup drafts (proposed from the output so far). Off on the CPU, where nothing runs
asynchronously: there it would only delay each step's output by one step's compute.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lighthouse.engine.request import Sequence, Status
from lighthouse.engine.sampling import PendingSample

if TYPE_CHECKING:
    from lighthouse.engine.model_runner import ModelRunner
    from lighthouse.engine.output import OutputProcessor, Sampled
    from lighthouse.engine.scheduler import Scheduler
    from lighthouse.engine.speculative.step import Speculator

log = logging.getLogger(__name__)


@dataclass
class InFlight:
    """A decode step launched and not yet read."""

    batch: list[Sequence]
    sample: PendingSample


class DecodeOverlap:
    def __init__(self, runner: "ModelRunner", outputs: "OutputProcessor", speculator: "Speculator", enabled: bool):
        self.runner, self.outputs, self.speculator = runner, outputs, speculator
        self.enabled = enabled
        self.inflight: InFlight | None = None
        self.chained = 0  # steps launched before the one before them was read (a running total)

    def takes(self, batch: list[Sequence]) -> bool:
        """Whether `batch`'s decode step may be left in flight: every row samples on the device alone."""
        return self.enabled and all(self._device_only(s) for s in batch)

    def _device_only(self, s: Sequence) -> bool:
        p = s.params
        penalties = p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0
        return s.grammar is None and not penalties and not self.speculator.num_tokens(s)

    def launch(self, batch: list[Sequence]) -> None:
        """The decode step of `batch` from the host's tokens and lengths, left in flight."""
        logits = self.runner.decode([s.kv for s in batch], [s.output_ids[-1] for s in batch])
        self.inflight = InFlight(batch, self.outputs.sample_async(batch, logits))

    def resolve(self, scheduler: "Scheduler", *, quiet: bool) -> tuple[list[Sequence], list["Sampled"]]:
        """Read the step in flight, after launching the next one when nothing else asks for the engine (`quiet`: no
        abort pending; the scheduler's `steady`) and every row has room for it: its rows still running, and their
        tokens."""
        step, self.inflight = self.inflight, None
        assert step is not None
        # (every row samples on the device alone still: it did at launch, and a row's drafts only shrink as it grows)
        chain = quiet and scheduler.steady(step.batch)
        if chain and all(len(s.output_ids) + 2 <= s.params.max_tokens for s in step.batch):
            try:
                logits = self.runner.decode_next(len(step.batch), step.sample.tokens)
                self.inflight = InFlight(step.batch, self.outputs.sample_async(step.batch, logits))
                self.chained += 1
            except Exception:  # not launched: the engine's next step runs it as usual (and isolates a fault there)
                log.debug("the overlapped decode step could not be launched; draining", exc_info=True)
                self.inflight = None
        try:
            sampled = self.outputs.sampled(step.batch, step.sample.read())
        except BaseException:
            self.inflight = None  # it took its ids from the step that failed: never read
            raise
        live = [b for b, s in enumerate(step.batch) if s.status is Status.RUNNING]
        if len(live) == len(step.batch):
            return step.batch, sampled
        return [step.batch[b] for b in live], [sampled[b] for b in live]
