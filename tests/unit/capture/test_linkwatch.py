"""rtnetlink link notices → interface events (parsed from the kernel's message layout)."""

from __future__ import annotations

import struct

from kstap.capture.linkwatch import RTM_DELLINK, RTM_NEWLINK, LinkWatch
from kstap.model import LinkChange


def message(kind: int, index: int, name: str | None) -> bytes:
    attrs = b""
    if name is not None:
        value = name.encode() + b"\0"
        attrs = struct.pack("=HH", 4 + len(value), 3) + value + b"\0" * (-len(value) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def watch(names: dict[int, str]) -> LinkWatch:
    w = LinkWatch.__new__(LinkWatch)  # no socket: the parser only
    w.names, w.gone = dict(names), {}
    return w


def test_new_and_deleted_links_become_events_and_state_changes_do_not() -> None:
    w = watch({1: "lo", 2: "veth0"})
    events = w._parse(message(RTM_NEWLINK, 2, "veth0") + message(RTM_NEWLINK, 7, "kv7")
                      + message(RTM_DELLINK, 7, "kv7") + message(RTM_DELLINK, 9, "never-seen"))
    assert [(e.change, e.name, e.ifindex) for e in events] == [
        (LinkChange.APPEARED, "kv7", 7), (LinkChange.VANISHED, "kv7", 7)]
    assert w.name(7) == "kv7"  # a late packet of a vanished interface still has its name
    assert w.name(42) == "if42"
    assert events[1].describe() == "interface kv7 (index 7) vanished"


def test_a_renamed_link_is_reported() -> None:
    w = watch({5: "veth1"})
    (event,) = w._parse(message(RTM_NEWLINK, 5, "uplink"))
    assert event.change is LinkChange.RENAMED and w.names[5] == "uplink"


def test_a_real_socket_sees_its_own_namespace() -> None:
    w = LinkWatch()
    try:
        assert 1 in w.names  # lo
        assert w.changes() == [] or all(e.ifindex for e in w.changes())
    finally:
        w.close()
