"""``kstap dissect FILE``: a capture file through the dissection stage alone, entries as NDJSON.

The offline twin of ``kstap tap --entries`` (:func:`kstap.pipeline.assembly.open_consumers`). It
imports nothing of the capture side (sources, sampler, governor, loop), so ``kstap dissect`` starts
in about half the time the whole pipeline takes to import.
"""

from __future__ import annotations

from kstap.dissect.entries import EntryWriter
from kstap.dissect.stage import DissectStage, default_flow_cap
from kstap.errors import OutputClosed
from kstap.formats.savefile import CaptureFormatError, CaptureReader, open_capture
from kstap.model import PacketRecord

DISSECT_BATCH = 1024
"""Records per dissector call in :func:`run_dissect`."""


def run_dissect(path: str, entries: str, *, seed: int, memory_cap: int, idle_timeout: float
                ) -> tuple[DissectStage, int, int, str | None]:
    """Dissect the capture file ``path`` into ``entries`` (NDJSON).

    Returns (the stage, for its statistics; packets read; entries written; the damage that ended
    the read early, or None). A damaged file keeps what was read before the damage.
    """

    writer = EntryWriter(entries)
    stage = DissectStage(seed=seed, memory_cap=memory_cap, flow_cap=default_flow_cap(memory_cap),
                         idle_timeout=idle_timeout, emit=writer.write)
    failure: str | None = None
    packets = 0
    batch: list[PacketRecord] = []
    reader: CaptureReader | None = None
    try:
        with open_capture(path, "kstap dissect") as f:
            try:
                reader = CaptureReader(f, path)
                for rec, _info in reader:
                    batch.append(rec)
                    if len(batch) >= DISSECT_BATCH:
                        stage.feed(batch, [i.linktype for i in reader.interfaces])
                        writer.flush()
                        batch = []
                packets = reader.packets
            except CaptureFormatError as exc:
                failure = str(exc)
                packets = exc.packets_ok
            if batch and reader is not None:
                stage.feed(batch, [i.linktype for i in reader.interfaces])
        stage.close()
        writer.flush()
    except OutputClosed:  # the reader of the entries left (| head): stop quietly, as tcpdump does
        packets = reader.packets if reader is not None else packets
    except OSError as exc:  # reading the input; an output's failure is OutputFailed and propagates
        failure = f"cannot read {path!r}: {exc.strerror}"
    finally:
        writer.close()
    return stage, packets, writer.count, failure
