"""Where captured packets go: pcapng files (or stdout)."""
