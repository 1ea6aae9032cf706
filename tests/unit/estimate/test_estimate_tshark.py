"""Wireshark shows kstap's sampling metadata, and ``kstap stats`` reads the same file back."""

from __future__ import annotations

import random
from pathlib import Path

import known_traffic as kt

from kstap.estimate.capture_stats import read_capture_stats
from kstap.sampling import metadata
from kstap.sampling.flowhash import flow_id, seed_id
from kstap.sampling.flowkey import flow_key

SEED = 77


def test_tshark_lists_the_comments_kstap_wrote(tmp_path: Path, wireshark) -> None:
    traffic = kt.make_traffic(60, random.Random(3), mean_packets=4, non_ip=2)
    switch = kt.T0 + 30 * 1_000_000_000
    sampled = kt.sample(traffic, SEED, kt.step(0.6, 0.3, switch), "auto")
    # the controller's change and an emergency shed, each on a packet of its own
    later = [i for i, r in enumerate(sampled.records)
             if r[0] >= switch and i not in sampled.comments and flow_key(r[3]) is not None]
    change, shed = later[0], later[-1]
    for index, make in ((change, lambda fid: metadata.rate_note(fid, 0.3, 0.6, "pi")),
                        (shed, lambda fid: metadata.shed_note(fid, 0.15, "emergency"))):
        key = flow_key(sampled.records[index][3])
        assert key is not None
        sampled.comments[index] = make(flow_id(key, SEED))
    path = kt.write_sampled(tmp_path / "sampled.pcapng", sampled, seed=SEED, rate=0.6, mode="auto")

    rows = wireshark.fields(path, "frame.number", "frame.comment", display_filter="frame.comment")
    assert [(int(n), c) for n, c in rows] == [(i + 1, c) for i, c in sorted(sampled.comments.items())]
    notes = [metadata.parse(c) for _, c in rows]
    assert all(n is not None for n in notes)
    events = [n.event for n in notes if n is not None]
    assert events.count("flow") == sampled.kept_flows and events.count("rate") == events.count("shed") == 1
    run = f"kstap: run mode=auto rate=0.6 seed={seed_id(SEED)} filter=ip or ip6"
    assert f"Capture comment:     {run}" in wireshark.capinfos(path)

    s = read_capture_stats(str(path))
    assert s.flows_sampled == sampled.kept_flows and s.shed_flows == 1
    assert [(c.previous, c.rate) for c in s.timeline.changes] == [(0.6, 0.3)]
