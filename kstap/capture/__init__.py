"""Capture sources: live AF_PACKET / libpcap sockets and offline pcap/pcapng files."""
