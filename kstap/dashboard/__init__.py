"""The live terminal dashboard: :mod:`kstap.dashboard.view` (a pure function of a
:class:`kstap.model.StatsSnapshot`) and :mod:`kstap.dashboard.live` (a Reporter driving rich's Live).

Only this package and :mod:`kstap.cli` import rich; import it lazily (``kstap --help`` stays fast).
"""
