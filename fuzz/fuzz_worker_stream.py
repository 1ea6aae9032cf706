"""atheris target: the worker stream as the CLI decodes it (kstap.remote.protocol).

See fuzz/remote_targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("worker_stream")
