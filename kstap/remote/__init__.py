"""Remote capture: the worker's HTTP API and the CLI's view of many workers as one source.

- :mod:`kstap.remote.protocol`: the versioned wire format (record batches with a watermark, packet
  comments, interface counters, events), strictly parsed.
- :mod:`kstap.remote.hub`: the worker side of a stream: the pipeline's sink, the backlog clients
  read from, and the inbox for live control.
- :mod:`kstap.remote.server`: the worker's HTTP API (``/healthz``, ``/v1/stream``, ``/v1/stats``,
  ``/v1/control``).
- :mod:`kstap.remote.transport`: how the CLI reaches a worker (directly, or through the
  Kubernetes API server's pod proxy).
- :mod:`kstap.remote.client`: :class:`~kstap.remote.client.RemoteSource`, N workers merged into
  one time-ordered record stream.
"""
