"""kstap: flow-sampling traffic capture on a resource budget."""

__version__ = "0.1.0"
