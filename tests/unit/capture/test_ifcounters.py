"""The interface counters behind ``left_out``: /proc/net/dev parsed, the wanted interfaces summed."""

from __future__ import annotations

from kstap.capture.ifcounters import InterfaceCounters, left_out, parse_net_dev

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier compressed
    lo: 123456 100 0 0 0 0 0 0 123456 100 0 0 0 0 0 0
kss1x0: 9000 40 0 0 0 0 0 0 4000 25 0 0 0 0 0 0
  veth-b: 10 3 0 0 0 0 0 0 20 4 0 0 0 0 0 0
"""


def test_parse_sums_received_and_sent_packets() -> None:
    assert parse_net_dev(NET_DEV) == {"lo": 200, "kss1x0": 65, "veth-b": 7}
    assert parse_net_dev(NET_DEV, frozenset({"kss1x0"})) == {"kss1x0": 65}


def test_uncountable_targets_give_none() -> None:
    for names in ([], ["any"], ["(file)"], [""]):
        counters = InterfaceCounters(names)
        counters.start()
        assert counters.since_start() is None
        counters.close()


def test_an_interface_that_is_not_there_gives_none() -> None:
    counters = InterfaceCounters(["lo", "kstap-no-such-if"])
    counters.start()
    assert counters.base is None and counters.since_start() is None
    counters.close()


def test_lo_counts_from_start_and_closes() -> None:
    counters = InterfaceCounters(["lo"])
    counters.start()
    assert counters.base is not None
    grown = counters.since_start()
    assert grown is not None and grown >= 0
    counters.close()
    counters.close()  # twice is harmless


def test_left_out() -> None:
    assert left_out(None, 5) is None
    assert left_out(10, 4) == 6
    assert left_out(3, 4) == 0
