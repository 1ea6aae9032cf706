# The kstap worker image (what the DaemonSet runs: `kstap worker …`).
#
#   docker build -t REGISTRY/kstap:0.1.0 .
#   docker push REGISTRY/kstap:0.1.0
#   kstap tap -n NAMESPACE --worker-image REGISTRY/kstap:0.1.0 …
#
# BASE_IMAGE: a Python 3.11 image with pip (default: the public python:3.11-slim). `make cluster` builds this
# file with buildah and --build-arg BASE_IMAGE=localhost/kstap-python:3.11 (made from a debootstrap base, no
# registry): docs/kubernetes.md, "The test cluster".
ARG BASE_IMAGE=python:3.11-slim

# -- build: kstap's wheel (with the optional C fast path) and its dependencies' wheels ----------------
FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY kstap/ kstap/
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime -----------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="kstap" \
      org.opencontainers.image.description="kstap capture worker: flow-sampling packet capture on a resource budget" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends libpcap0.8 libcap2-bin \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels kstap \
 && rm -rf /wheels \
 && python -m compileall -q "$(python -c 'import kstap, os; print(os.path.dirname(kstap.__file__))')"
# NET_RAW as a file capability of the interpreter (the `kstap` script's #! points at it), so the worker
# runs as UID 65534 with NET_RAW and nothing else. The pod adds NET_RAW to its bounding and permitted
# sets (capabilities.add); with allowPrivilegeEscalation: false (no_new_privs) the kernel still honours
# a file capability that is already permitted. Only NET_RAW: a file capability outside the bounding set
# would make every exec of python fail (capabilities(7), "capability-dumb binaries").
RUN python_bin="$(readlink -f "$(command -v python3)")" \
 && setcap cap_net_raw+ep "$python_bin" \
 && getcap "$python_bin" \
 && apt-get purge -y --auto-remove libcap2-bin
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65534:65534
ENTRYPOINT ["kstap"]
CMD ["worker", "--help"]
