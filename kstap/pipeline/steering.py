"""Steering: the sampling rate, the kernel filter and live control requests, once a tick.

The only back edge of the pipeline: the controller's rate (through the governor) or a control
request moves the sampler; a new rate ceiling or filter becomes a new kernel filter on the
source, when the source declares ``live_filter``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import cast

from kstap.capture import backends, netns
from kstap.capture.flowtable import FirstPacketTable
from kstap.capture.pcap_live import compile_for_live, needs_live_compile
from kstap.config import TapSettings
from kstap.contracts import FilterSource, Governor, LiveControl, RateChanged, Reporter, Source
from kstap.errors import KstapError
from kstap.filters.bpf import LINKTYPE_LINUX_SLL2, Program, compile_filter, final_expression, for_cooked_socket
from kstap.model import CaptureSummary, ControllerState
from kstap.pipeline.resources import ResourceWatch
from kstap.sampling.flowhash import FULL, splice_threshold, threshold
from kstap.sampling.flowkey import KeyTuple
from kstap.sampling.kernel_table import KernelFlowTable
from kstap.sampling.metadata import flow_note_suffix, shed_note_suffix
from kstap.sampling.sampler import FlowSampler
from kstap.vocabulary import AlertLevel, Cause, Mode


def sampled(base: Program, sampler: FlowSampler) -> Program:
    """``base`` with the sampling tail for the sampler's current ceiling (read at cooked offsets
    when ``base`` runs on a cooked socket)."""
    spliced = splice_threshold(base.insns, sampler.seed, sampler.ceiling(), cooked=base.cooked)
    return base.with_insns(spliced.insns)


def compile_live(expression: str, settings: TapSettings) -> Program:
    """The kernel filter for a live capture: with ``-i any`` on af_packet, compiled for LINUX_SLL2
    and rewritten for the cooked socket."""
    if backends.cooked(settings.interfaces, settings.capture):
        return for_cooked_socket(compile_filter(expression, linktype=LINKTYPE_LINUX_SLL2, snaplen=settings.snaplen))
    return compile_filter(expression, snaplen=settings.snaplen)


class Steering:
    """The rate in force and how it gets there (sampler, governor, control inbox, kernel filter)."""

    def __init__(self, settings: TapSettings, source: Source, reporter: Reporter, watch: ResourceWatch,
                 sampler: FlowSampler | None, governor: Governor | None, base: Program | None,
                 control: LiveControl | None = None, kernel: KernelFlowTable | None = None) -> None:
        self.settings = settings
        self.source = source
        self.reporter = reporter
        self.watch = watch
        self.sampler = sampler
        self.governor = governor
        self.base = base
        """The filter without its sampling tail (None: this source's filter cannot be swapped)."""
        self.control = control
        self.kernel = kernel
        """Auto mode's in-kernel flow table: it decides flows; the rate reaches it as a map update."""
        self.ceiling = sampler.ceiling() if sampler else FULL
        self.seen: FirstPacketTable | None = None
        """Percentage mode on the C fast path: the kernel samples, C comments first packets."""
        self.controller: ControllerState | None = None
        self.rate_history: list[tuple[float, float]] = []
        self.on_shed: Callable[[list[KeyTuple]], None] = lambda flows: None
        """Told which live flows an emergency shed (the dissector forgets them)."""

    @property
    def rate(self) -> float:
        return self.sampler.rate if self.sampler is not None else 1.0

    def use_seen_flows(self) -> None:
        """Hand first-packet comments to the C fast path (percentage mode or the kernel flow table:
        the kernel decided)."""
        smp = self.sampler
        assert smp is not None
        # the kernel flow table says when no flow started, so most packets skip the table (until a
        # key is cut by the snaplen: FirstPacketTable.keys_cut)
        self.seen = FirstPacketTable(smp.seed, flow_note_suffix(smp.mode, smp.rate, smp.seed_id),
                                     idle_timeout_ns=smp.idle_timeout_ns, kernel=self.kernel)

    def tick(self, elapsed: float, summary: CaptureSummary) -> None:
        """Once a second, after :meth:`apply_control` and the counters: flow expiry, the controller,
        the kernel ceiling, the rate history."""
        sampler = self.sampler
        if self.seen is not None:
            if int(elapsed) % 10 == 0:
                self.seen.expire(time.time_ns())
            if sampler is not None and self.governor is not None:
                self._govern(sampler, elapsed, summary)
        elif sampler is not None:
            sampler.expire(time.time_ns())
            if self.governor is not None:
                self._govern(sampler, elapsed, summary)
            self._update_ceiling(sampler)
        self.rate_history.append((elapsed, self.rate))

    def apply_control(self) -> None:
        """A rate or filter asked for from outside (a worker's POST /v1/control), once a tick."""
        if self.control is None:
            return
        request = self.control.take()
        if request is None:
            return
        error = None
        try:
            if request.filter is not None:
                self._swap_filter(request.filter)
            if request.rate is not None:
                self._set_rate(request.rate)
        except KstapError as exc:
            error = exc.message
            self.reporter.warning(f"control request not applied: {exc.message}")
        self.control.done(request, error)

    def _swap_filter(self, expression: str) -> None:
        if self.base is None or not self.source.capabilities.live_filter:
            raise KstapError("this capture backend cannot change its filter while running",
                             hint="restart the capture with the new --bpf-filter")
        settings = self.settings
        base = compile_live(final_expression(expression), settings)
        if needs_live_compile(base.expression) and not base.cooked:
            with netns.entered(settings.netns):
                base = compile_for_live(settings.interfaces[0], base.expression, settings.snaplen)
        sampler = self.sampler
        program = (replace(base, attacher=self.kernel) if self.kernel is not None else
                   sampled(base, sampler) if sampler is not None else base)
        cast(FilterSource, self.source).set_filter(program)
        self.base = base
        self.ceiling = sampler.ceiling() if sampler is not None else FULL
        settings.bpf_filter = expression

    def _set_rate(self, rate: float) -> None:
        sampler = self.sampler
        if sampler is None or sampler.mode != Mode.PERCENTAGE:
            raise KstapError("the rate can be changed live only in percentage mode",
                             hint="start the capture with --mode percentage")
        old = sampler.rate
        if not sampler.set_rate(rate, Cause.CONTROL.value):
            return
        if self.seen is not None:  # the C path writes first-packet comments itself: the new rate from now on
            self.seen.suffix = flow_note_suffix(sampler.mode, sampler.rate, sampler.seed_id)
        self.reporter.event(RateChanged(old, sampler.rate, Cause.CONTROL, Cause.CONTROL.value))
        self._update_ceiling(sampler)

    def _govern(self, sampler: FlowSampler, elapsed: float, summary: CaptureSummary) -> None:
        assert self.governor is not None
        resources, state = self.governor.update(summary.dropped, summary.received)
        self.controller = state
        self.watch.saw(resources, elapsed)
        old = sampler.rate
        if state.cause is Cause.EMERGENCY and state.rate < old:
            shed = sampler.shed(state.rate)
            self.on_shed(shed)
            self.watch.alert(AlertLevel.CRITICAL, "shed",
                             f"emergency: rate {old:.3g} -> {state.rate:.3g}, {len(shed)} live flows shed")
        elif not sampler.set_rate(state.rate, state.reason or Cause.PI.value):
            return
        if self.kernel is not None:  # new flows are decided in the kernel against the new rate
            if state.cause is Cause.EMERGENCY and state.rate < old:
                since = time.time_ns()  # before the maps change: the packet the kernel lets through is later
                self.kernel.shed(sampler.rate)
                if self.seen is not None:
                    self.seen.shed(threshold(sampler.rate), since, shed_note_suffix(sampler.rate))
            else:
                self.kernel.set_rate(sampler.rate)
        if self.seen is not None:
            self.seen.suffix = flow_note_suffix(sampler.mode, sampler.rate, sampler.seed_id)
        self.reporter.event(RateChanged(old, sampler.rate, state.cause or Cause.PI, state.reason, state.pressure))

    def _update_ceiling(self, sampler: FlowSampler) -> None:
        ceiling = sampler.ceiling()
        if ceiling == self.ceiling or self.base is None or self.kernel is not None:
            return
        if self.source.capabilities.live_filter:
            cast(FilterSource, self.source).set_filter(sampled(self.base, sampler))
        self.ceiling = ceiling
