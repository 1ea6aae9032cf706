"""atheris target: the HTTP/2 + gRPC dissector (kstap.dissect.http2). See fuzz/targets.py for the contract."""

from harness import main

if __name__ == "__main__":
    main("http2")
