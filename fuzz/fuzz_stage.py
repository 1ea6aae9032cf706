"""atheris target: the dissection stage on raw frames: decoding, TCP reassembly, detection (kstap.dissect.stage).

See fuzz/targets.py for the contract.
"""

from harness import main

if __name__ == "__main__":
    main("stage")
