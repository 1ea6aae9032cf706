"""atheris target: the DNS dissector over UDP and TCP (kstap.dissect.dns). See fuzz/targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("dns")
