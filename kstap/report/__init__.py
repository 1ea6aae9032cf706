"""kstap report: a self-contained HTML page about one capture."""
