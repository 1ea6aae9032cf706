"""atheris target: frame decoding: the flow key, the sampler, the one-line packet description, the BPF sampling tail.

See fuzz/targets.py for the contract.
"""

from harness import main

if __name__ == "__main__":
    main("flowkey")
