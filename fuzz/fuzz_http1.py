"""atheris target: the HTTP/1.x dissector (kstap.dissect.http1). See fuzz/targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("http1")
