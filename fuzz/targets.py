"""Fuzz targets: one function per parser, bytes in, the parser's contract checked.

Each target drives one parser with arbitrary bytes and lets through only what that parser's
contract allows; anything else propagates and is a crash:

========== ===================================================== ==================================
target     what runs                                             may raise
========== ===================================================== ==================================
flowkey    ``key_tuple``/``flow_key``/``flow_hash``, the sampler's  nothing
           ``admit``, ``sinks.text.describe``; the BPF sampling
           tail must decide exactly like the Python hash
savefile   ``CaptureReader`` over a pcap/pcapng byte stream        ``CaptureFormatError``
http1      ``Http1Parser`` feed/gap/close in both directions      ``ParserError`` (feed/gap only)
http2      ``Http2Parser`` (prior knowledge and h2c upgraded)      ``ParserError`` (feed/gap only)
dns        ``dns.decode``, ``DnsUdpTracker``, ``DnsTcpParser``     ``DnsError`` (decode), ``ParserError``
stage      ``DissectStage.feed`` on frames cut from the input     nothing, and no "internal" error
settings   config file + ``--set`` + ``KSTAP_*`` → ``resolve``     ``UsageError``
           → ``TapSettings.validate``
worker_api requests of one connection to the worker's HTTP API       nothing (see remote_targets.py)
worker_    a worker stream in pieces → ``StreamDecoder``            ``ProtocolError``
stream
========== ===================================================== ==================================

Every entry a dissector returns must also survive what the NDJSON writer does with it
(``json.dumps(..., allow_nan=False)`` and UTF-8 encoding), and parsers' ``memory`` must stay an
int ≥ 0. The same functions serve atheris (``fuzz/fuzz_*.py``, ``make fuzz``) and hypothesis
(``tests/unit/fuzz/``), which calls the ``run_*`` forms with structured inputs.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence

from kstap import config
from kstap.dissect.api import Entry, FlowContext, ParserError
from kstap.dissect.dns import DnsError, DnsTcpParser, DnsUdpTracker, decode
from kstap.dissect.http1 import Http1Parser
from kstap.dissect.http2 import Http2Limits, Http2Parser
from kstap.dissect.stage import DissectStage
from kstap.errors import UsageError
from kstap.filters.bpf import Program, compile_filter
from kstap.formats.savefile import CaptureFormatError, CaptureReader
from kstap.model import PacketRecord
from kstap.sampling.flowhash import flow_hash, splice
from kstap.sampling.flowkey import FlowKey, flow_key, key_tuple
from kstap.sampling.sampler import FlowSampler
from kstap.settings_sources import resolve, tap_parsers
from kstap.sinks.text import describe

T0 = 1_700_000_000 * 10**9
FLOW = FlowContext("f-fuzz", "10.9.0.1:40000", "10.9.0.2:8080",
                   FlowKey(6, bytes([10, 9, 0, 1]), 40000, bytes([10, 9, 0, 2]), 8080))
LINKTYPES = (1, 101, 113, 276, 0, 12, 228, 229, 108, 147)
"""Link types a frame may be read as (the first input byte picks one): the ones the decoders know,
and one they do not."""


# -- shared checks -----------------------------------------------------------------------------------------

def check_entries(entries: Sequence[Entry]) -> None:
    """What the NDJSON writer does with an entry must work (no NaN, encodable as UTF-8)."""
    for e in entries:
        assert isinstance(e, Entry), type(e)
        json.dumps(e.to_json(), ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_memory(value: object) -> None:
    assert isinstance(value, int) and value >= 0, value


# -- operations on a two-way stream ------------------------------------------------------------------------

Op = tuple[str, int, bytes | int]
"""("feed", direction, bytes) or ("gap", direction, nbytes)."""


def stream_ops(data: bytes) -> list[Op]:
    """Cut ``data`` into feed/gap operations: a control byte, then (for feeds) a length byte and the bytes.

    Control byte: bit 0 = direction; bits 1-2 = 0,1,2 feed, 3 gap; bit 3 = the length counts in
    units of 64 (a feed of up to 16 KiB, so limits can be reached). A gap's size is the next byte.
    """
    ops: list[Op] = []
    pos = 0
    while pos < len(data):
        ctl = data[pos]
        direction = ctl & 1
        if (ctl >> 1) & 3 == 3:
            size = data[pos + 1] if pos + 1 < len(data) else 1
            ops.append(("gap", direction, size + 1))
            pos += 2
            continue
        length = data[pos + 1] if pos + 1 < len(data) else 0
        if ctl & 8:
            length *= 64
        chunk = data[pos + 2 : pos + 2 + length]
        ops.append(("feed", direction, chunk))
        pos += 2 + len(chunk)
    return ops


def run_stream_parser(make: Callable[[], object], ops: Sequence[Op]) -> list[Entry]:
    """Feed ``ops`` to a fresh parser; ParserError from feed/gap ends the stream (as the stage does)."""
    parser = make()
    out: list[Entry] = []
    ts = T0
    failed = False
    for kind, direction, arg in ops:
        ts += 1_000_000
        try:
            if kind == "feed":
                assert isinstance(arg, bytes)
                got = parser.feed(direction, arg, ts)  # type: ignore[attr-defined]
            else:
                assert isinstance(arg, int)
                got = parser.gap(direction, arg, ts)  # type: ignore[attr-defined]
        except ParserError as exc:
            assert isinstance(exc.kind, str) and exc.kind
            failed = True
            break
        check_entries(got)
        out.extend(got)
        check_memory(parser.memory)  # type: ignore[attr-defined]
    closed = parser.close(ts + 1)  # type: ignore[attr-defined]
    check_entries(closed)
    check_memory(parser.memory)  # type: ignore[attr-defined]
    del failed
    return out + closed


def run_http1(ops: Sequence[Op]) -> list[Entry]:
    return run_stream_parser(lambda: Http1Parser(FLOW), ops)


def run_http2(ops: Sequence[Op], upgraded: bool = False) -> list[Entry]:
    limits = Http2Limits(max_streams=64, max_header_list=8 << 10, max_header_block=8 << 10, max_continuations=8,
                         max_table_size=8 << 10, max_upgrade_head=4 << 10)
    return run_stream_parser(lambda: Http2Parser(FLOW, upgraded=upgraded, limits=limits), ops)


def run_dns_tcp(ops: Sequence[Op]) -> list[Entry]:
    return run_stream_parser(lambda: DnsTcpParser(FLOW), ops)


def http1(data: bytes) -> None:
    run_http1(stream_ops(data))


def http2(data: bytes) -> None:
    upgraded = bool(data[:1]) and data[0] & 1 == 1
    run_http2(stream_ops(data[1:]), upgraded)


# -- DNS ---------------------------------------------------------------------------------------------------

def run_dns_messages(messages: Sequence[tuple[bool, bytes]]) -> list[Entry]:
    """Each (from_client, payload) through ``decode`` and the UDP tracker (port 53 and a plain port)."""
    tracker = DnsUdpTracker(lambda key: "f-fuzz", max_pending=32)
    out: list[Entry] = []
    a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    for i, (from_client, payload) in enumerate(messages):
        try:
            msg = decode(payload)
        except DnsError as exc:
            assert exc.kind.startswith("dns-"), exc.kind
        else:
            assert 0 <= msg.id <= 0xFFFF and msg.answers >= 0
        for port in (53, 5353):
            key = (17, a, 40000, b, port)
            src, sport, dst, dport = (a, 40000, b, port) if from_client else (b, port, a, 40000)
            got = tracker.datagram(key, src, sport, dst, dport, payload, T0 + i)
            check_entries(got)
            out += got
        check_memory(tracker.memory)
    out += tracker.evict(10_000)[0]
    out += tracker.close()
    check_entries(out)
    return out


def dns(data: bytes) -> None:
    """First byte < 128: UDP messages (a flag byte, bit 0 = sent by the client; a length byte; the
    message); else a DNS-over-TCP stream (:func:`stream_ops`)."""
    if not data:
        return
    if data[0] < 128:
        messages = []
        pos = 1
        while pos + 1 < len(data):
            n = data[pos + 1]
            messages.append((bool(data[pos] & 1), data[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        run_dns_messages(messages)
    else:
        run_dns_tcp(stream_ops(data[1:]))


# -- pcap / pcapng -----------------------------------------------------------------------------------------

def run_savefile(data: bytes) -> int:
    """Read every packet; returns how many. Only CaptureFormatError may escape."""
    try:
        reader = CaptureReader(io.BytesIO(data), "fuzz")
    except CaptureFormatError as exc:
        assert exc.packets_ok == 0
        return 0
    n = 0
    try:
        for rec, info in reader:
            ts, caplen, origlen, frame, if_id, worker = rec
            assert caplen == len(frame), (caplen, len(frame))
            assert isinstance(ts, int) and isinstance(origlen, int) and isinstance(worker, int)
            assert 0 <= if_id < len(reader.interfaces), (if_id, reader.interfaces)
            assert info is None or isinstance(info.comments, list)
            n += 1
    except CaptureFormatError as exc:
        assert exc.packets_ok == n, (exc.packets_ok, n)
    assert reader.packets == n
    return n


def savefile(data: bytes) -> None:
    run_savefile(data)


# -- frames: flow key, sampler, one-line description, BPF tail ---------------------------------------------

_TAILS: dict[tuple[int, float], object] = {}


def _sampled_program(seed: int, rate: float) -> object:
    key = (seed, rate)
    if key not in _TAILS:
        spliced = splice(compile_filter("").insns, seed, rate)
        _TAILS[key] = (Program("", 1, 262144, spliced.insns), spliced.threshold)
    return _TAILS[key]


def run_frame(frame: bytes, linktype: int, seed: int = 0x5EED, check_bpf: bool = True) -> None:
    t = key_tuple(frame, linktype)
    k = flow_key(frame, linktype)
    assert (t is None) == (k is None)
    if k is not None:
        proto, a_addr, a_port, b_addr, b_port = t  # type: ignore[misc]
        assert (a_addr, a_port) <= (b_addr, b_port)
        assert len(a_addr) == len(b_addr) in (4, 16)
        assert 0 <= a_port <= 0xFFFF and 0 <= b_port <= 0xFFFF and 0 <= proto <= 255
        h = flow_hash(k, seed)
        assert 0 <= h < 2**32 and h == flow_hash(FlowKey(*t), seed)  # type: ignore[misc]
        str(k)
    rec: PacketRecord = (T0, len(frame), len(frame) + 7, frame, 0, 0)
    sampler = FlowSampler("percentage", 0.5, seed, linktypes=(linktype,))
    kept, notes = sampler.admit([rec, rec])
    assert len(kept) in (0, 2) and all(0 <= i < len(kept) for i in notes)
    line = describe(rec, linktype)
    assert isinstance(line, str) and "\n" not in line, line
    if check_bpf and linktype == 1:  # every frame, short ones too: the tail checks lengths as Python does
        program, thresh = _sampled_program(seed, 0.5)  # type: ignore[misc]
        kernel = program.matches(frame, len(frame))
        python = k is None or flow_hash(k, seed) < thresh
        assert kernel == python, f"BPF tail keeps={kernel}, Python keeps={python}, key={k}, frame={frame.hex()}"


def flowkey(data: bytes) -> None:
    if not data:
        return
    run_frame(data[1:], LINKTYPES[data[0] % len(LINKTYPES)])


# -- the dissection stage ----------------------------------------------------------------------------------

def run_stage(records: Sequence[PacketRecord], linktypes: Sequence[int], memory_cap: int = 1 << 20) -> list[Entry]:
    got: list[Entry] = []
    stage = DissectStage(seed=7, memory_cap=memory_cap, flow_cap=memory_cap // 4, idle_timeout=5.0,
                         emit=got.append)
    for i in range(0, len(records), 8):
        stage.feed(records[i : i + 8], linktypes)
        check_memory(stage.memory)
    stage.tick(T0 + 10**12)
    stage.close()
    st = stage.stats()
    assert "internal" not in st.errors and "emit" not in st.errors, st.errors
    check_entries(got)
    assert stage.memory >= 0
    return got


def frames_of(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(interface, frame) pieces: a byte of interface+length-high bits, a length byte, the frame."""
    pos = 0
    while pos + 1 < len(data):
        ifid = data[pos] & 3
        length = ((data[pos] >> 2) << 8) | data[pos + 1]
        yield ifid, data[pos + 2 : pos + 2 + length]
        pos += 2 + length


def stage(data: bytes) -> None:
    if not data:
        return
    linktypes = [LINKTYPES[(data[0] >> (2 * i)) & 3] for i in range(4)]  # ethernet, raw, sll, sll2
    records: list[PacketRecord] = []
    ts = T0
    for ifid, frame in frames_of(data[1:]):
        ts += 1_000_000
        records.append((ts, len(frame), len(frame), frame, ifid, 0))
    run_stage(records, linktypes)


# -- settings: config file, --set, KSTAP_* -----------------------------------------------------------------

_CONFIG_DIR = tempfile.mkdtemp(prefix="kstap-fuzz-")
CONFIG_PATH = os.path.join(_CONFIG_DIR, "config.yaml")


def run_settings(config_text: str | None, set_items: Sequence[str], env: dict[str, str]) -> object:
    """Resolve TapSettings from the three sources and validate them; only UsageError may escape."""
    path = None
    if config_text is not None:
        with open(CONFIG_PATH, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(config_text)
        path = CONFIG_PATH
    env = {"HOME": _CONFIG_DIR, **env}
    try:
        resolved = resolve(config.TapSettings, config=path, env=env, set_items=list(set_items),
                           profiles=config.PROFILES, parsers=tap_parsers())
        settings = resolved.settings
        config.settle_auto_start(settings, {k for k, o in resolved.origins.items() if o != "default"})
        settings.validate()
    except UsageError as exc:
        assert exc.message and "\n" not in exc.message, exc.message
        return None
    # what the pipeline derives from validated settings must work too
    smp, out = settings.sampling, settings.output
    int(smp.idle_timeout * 1e9)
    if out.rotate_mb:
        int(out.rotate_mb * 1_000_000)
    assert settings.dissect_memory_mib << 20 > 0
    if smp.seed is not None:
        assert 0 <= smp.seed < 2**32
    return settings


def settings(data: bytes) -> None:
    """``CONFIG \\0 SET-ITEMS (one per line) \\0 ENV (NAME=VALUE per line)``; no config part: no file."""
    text = data.decode("utf-8", "replace")
    parts = text.split("\0")
    config_text = parts[0] if parts[0] else None
    set_items = [s for s in parts[1].split("\n") if s] if len(parts) > 1 else []
    env = {}
    for line in parts[2].split("\n") if len(parts) > 2 else []:
        name, sep, value = line.partition("=")
        if sep and name:
            env["KSTAP_" + name.upper()] = value
    run_settings(config_text, set_items, env)


def _remote_targets() -> dict[str, Callable[[bytes], None]]:
    import remote_targets  # fuzz/remote_targets.py: the worker API and the worker stream

    return dict(remote_targets.TARGETS)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "flowkey": flowkey, "savefile": savefile, "http1": http1, "http2": http2, "dns": dns, "stage": stage,
    "settings": settings, **_remote_targets(),
}
