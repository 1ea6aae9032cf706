"""The Kubernetes control plane: find the target pods, deploy the capture workers, clean up.

- :mod:`kstap.kube.client` — load a kubeconfig (or in-cluster config), call the API through the
  real ``kubernetes`` client, turn API failures into typed :mod:`kstap.errors` by status.
- :mod:`kstap.kube.targets` — which pods to capture (``-n``/``-A``/``-e``/regex), grouped by node,
  kept up to date by a watch.
- :mod:`kstap.kube.nodefilter` — each node's BPF filter: the user's expression and that node's pod
  IPs, with CIDR and user-space fallbacks past the kernel's instruction limit.
- :mod:`kstap.kube.manifests` — the objects kstap deploys, as plain dicts (pure functions).
- :mod:`kstap.kube.deploy` — apply them, wait for the workers, ``clean``.

Nothing here touches the terminal; :mod:`kstap.cli.kube_cmds` renders.
"""
