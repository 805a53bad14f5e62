# The kdmkb image: the coordinator and every Ray node of docker-compose.yml. deploy/build-images.sh
# builds it with --network none: every dependency comes from the wheelhouse it puts in the
# context (CPU torch), so nothing is downloaded here. BASE: any image with Python 3.11 and venv;
# the script passes one imported from debootstrap, a machine with a registry can keep the default.
ARG BASE=python:3.11-slim

FROM ${BASE} AS deps
COPY build/docker/requirements.txt /tmp/requirements.txt
COPY build/docker/wheelhouse /tmp/wheelhouse
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheelhouse -r /tmp/requirements.txt

# The wheelhouse stays behind in the first stage; only the installed environment is copied.
FROM ${BASE}
# The imported base has no PATH of its own. The rest is services/ray_runtime.py's WORKER_ENV:
# Ray workers inherit their node's environment, so a cluster sets it where the nodes start.
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    OMP_WAIT_POLICY=PASSIVE \
    RAY_AUTH_MODE=disabled \
    MALLOC_MMAP_THRESHOLD_=4294967296 \
    MALLOC_TRIM_THRESHOLD_=4294967296
# /var/lib/kdmkb: the coordinator's data dir, and on a Ray node its KB's checkpoints; compose
# mounts volumes there, which take this owner when they are created.
RUN useradd --create-home --uid 1000 kdmkb \
 && mkdir -p /var/lib/kdmkb/checkpoints && chown -R kdmkb /var/lib/kdmkb
COPY --from=deps /opt/venv /opt/venv
COPY pyproject.toml README.md /opt/kdmkb/
COPY kb_worker /opt/kdmkb/kb_worker
COPY coordinator /opt/kdmkb/coordinator
COPY services /opt/kdmkb/services
COPY protos /opt/kdmkb/protos
COPY kdmkb /opt/kdmkb/kdmkb
COPY deploy /opt/kdmkb/deploy
RUN pip install --no-cache-dir --no-deps --no-build-isolation /opt/kdmkb && rm -rf /opt/kdmkb
USER kdmkb
WORKDIR /home/kdmkb
CMD ["kdmkb", "--help"]
