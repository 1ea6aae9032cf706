"""The user-space flow table: whole sessions kept or dropped, across rate changes.

The kernel filter drops every packet whose flow hash is at or above a *ceiling*. The flow table
decides each flow once, at its first packet, with the rate in force then, and keeps that
decision until the flow idles out. Lowering the rate therefore stops *new* flows; live admitted
flows keep flowing because the ceiling stays high enough for the highest hash among them. Only an
emergency shed cuts live flows, highest hashes first, and it marks each one in the capture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from kstap.model import PacketRecord
from kstap.sampling import metadata
from kstap.sampling.flowhash import FULL, flow_hash, seed_id, threshold
from kstap.sampling.flowkey import FlowKey, KeyTuple, key_tuple

MODES = ("full", "percentage", "auto")


@dataclass
class FlowState:
    """One flow the sampler has seen."""

    hash: int
    kept: bool
    rate: float
    """The rate in force at the flow's first packet: its inclusion probability."""
    last_ns: int
    packets: int = 0
    shed_pending: bool = False


@dataclass
class SamplerStats:
    flows_tracked: int = 0
    flows_kept: int = 0
    flows_seen: int = 0
    flows_estimated: float = 0.0
    """Σ 1/rate over kept flows, the rate each was decided at: all flows, estimated (Horvitz-Thompson)."""
    packets_kept: int = 0
    sampled_out: int = 0
    """Packets the kernel let through (under the ceiling) that the flow table dropped."""
    shed_flows: int = 0
    expired: int = 0


@dataclass
class FlowSampler:
    """Decides per flow; produces packet comments; says which ceiling the kernel filter needs."""

    mode: str
    rate: float
    seed: int
    idle_timeout_ns: int = 60_000_000_000
    """A flow not seen for this long is forgotten (60 s: longer than TCP keep-alive gaps of
    typical HTTP clients, short enough that the table does not grow without bound)."""
    linktypes: Sequence[int] = (1,)
    flows: dict[KeyTuple, FlowState] = field(default_factory=dict)
    stats: SamplerStats = field(default_factory=SamplerStats)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown sampling mode {self.mode!r}")
        if self.mode == "full":
            self.rate = 1.0
        self.seed_id = seed_id(self.seed)
        self._pending_rate_notes: list[tuple[float, float, str]] = []
        """Rate changes (new, previous, reason) not yet written on a packet: every one is kept."""
        self._previous_rate = self.rate
        self._shed_grace = False

    # -- per batch ---------------------------------------------------------------------------------
    def admit(self, records: Sequence[PacketRecord]) -> tuple[list[PacketRecord], dict[int, str]]:
        """The records to keep, and comments keyed by their index in the returned list."""
        kept: list[PacketRecord] = []
        notes: dict[int, str] = {}
        flows = self.flows
        thresh = threshold(self.rate)
        linktypes = self.linktypes
        stats = self.stats
        for rec in records:
            ifid = rec[4]
            key = key_tuple(rec[3], linktypes[ifid] if ifid < len(linktypes) else 1)
            if key is None:  # non-IP: no flow, always kept
                kept.append(rec)
                continue
            st = flows.get(key)
            if st is None:
                h = flow_hash(FlowKey(*key), self.seed)
                st = FlowState(h, h < thresh, self.rate, rec[0])
                flows[key] = st
                stats.flows_seen += 1
                if st.kept:
                    stats.flows_kept += 1
                    stats.flows_estimated += 1.0 / self.rate
                    notes[len(kept)] = metadata.flow_note(f"{h:08x}", self.mode, self.rate, self.seed_id)
            st.last_ns = rec[0]
            if not st.kept:
                stats.sampled_out += 1
                continue
            if st.shed_pending:
                notes[len(kept)] = metadata.shed_note(f"{st.hash:08x}", self.rate, "emergency")
                st.kept = False
                st.shed_pending = False
            elif self._pending_rate_notes and len(kept) not in notes:
                flow_id = f"{st.hash:08x}"
                notes[len(kept)] = "\n".join(metadata.rate_note(flow_id, new, old, reason)
                                             for new, old, reason in self._pending_rate_notes)
                self._pending_rate_notes = []
            st.packets += 1
            kept.append(rec)
        stats.packets_kept += len(kept)
        stats.flows_tracked = len(flows)
        return kept, notes

    # -- control -----------------------------------------------------------------------------------
    def set_rate(self, rate: float, reason: str) -> bool:
        """A new rate for new flows. Returns True when it changed."""
        if self.mode == "full" or (self.mode == "percentage" and reason not in ("shed", "control")):
            return False
        rate = max(0.0, min(1.0, rate))
        if rate == self.rate:
            return False
        self._pending_rate_notes.append((rate, self.rate, reason))
        self.rate = rate
        return True

    def unwritten_rate_notes(self) -> list[str]:
        """The rate changes no packet has carried yet (the capture may end before one does): the
        statistics block at the end of a file carries them, so ``kstap stats`` sees the last ones."""
        return [metadata.rate_note("-", new, old, reason) for new, old, reason in self._pending_rate_notes]

    def shed(self, rate: float) -> list[KeyTuple]:
        """Emergency: cut live flows whose hash is at or above the new rate's threshold.

        Each shed flow's next packet is kept and carries a ``shed`` comment, then the flow is
        dropped; the kernel ceiling comes down one tick later so those marks get through.
        """
        self.set_rate(rate, "emergency")
        thresh = threshold(self.rate)
        doomed = []
        for key, st in self.flows.items():
            if st.kept and st.hash >= thresh and not st.shed_pending:
                st.shed_pending = True
                doomed.append(key)
        self.stats.shed_flows += len(doomed)
        self._shed_grace = bool(doomed)
        return doomed

    def expire(self, now_ns: int) -> int:
        """Forget flows idle for longer than the timeout (their ceiling share goes with them)."""
        limit = now_ns - self.idle_timeout_ns
        stale = [k for k, st in self.flows.items() if st.last_ns < limit]
        for k in stale:
            del self.flows[k]
        self.stats.expired += len(stale)
        self.stats.flows_tracked = len(self.flows)
        return len(stale)

    def ceiling(self) -> int:
        """The hash threshold the kernel filter needs: the rate's, raised for live admitted flows."""
        if self.mode == "full":
            return FULL
        top = threshold(self.rate)
        if self._shed_grace:
            self._shed_grace = False
            return max([top] + [st.hash + 1 for st in self.flows.values() if st.kept])
        for st in self.flows.values():
            if st.kept and not st.shed_pending and st.hash >= top:
                top = st.hash + 1
        return min(top, FULL)
