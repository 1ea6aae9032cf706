"""Estimates of the true traffic behind a sampled capture (``kstap stats``).

:mod:`kstap.estimate.horvitz_thompson` is the pure estimator (per-flow values and inclusion
probabilities in, totals with 95% intervals out); :mod:`kstap.estimate.capture_stats` reads a
capture, groups its packets into flows and takes each flow's probability from kstap's comments.
The method and its assumptions are in docs/estimates.md.
"""
