"""atheris target: the pcap/pcapng reader (kstap.formats.savefile). See fuzz/targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("savefile")
