"""atheris target: the worker's HTTP API (kstap.remote.server). See fuzz/remote_targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("worker_api")
