def test_frag(harness):
    k_path, t_path = harness.tmp / "workers.pcapng", harness.tmp / "tcpdump.pcap"
    harness.server()
    kst = harness.kstap(k_path, "-f", "udp", "--workers", "2")
    tcd = harness.tcpdump(t_path, "udp")
    harness.send(udp_flows=4, udp_sizes=(10, 3000), tcp_conns=0)
    print(harness.settle(k_path, t_path, timeout=3))
    kst.stop(); tcd.stop()
    k, t = harness.read(k_path), harness.read(t_path)
    print(len(k.packets), len(t.packets))
    print(sorted(r[2] for r in k.records))
    print(sorted(r[2] for r in t.records))
