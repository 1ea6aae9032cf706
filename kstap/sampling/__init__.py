"""Flow sampling: the flow key, the seeded symmetric flow hash, and its in-kernel BPF twin."""
