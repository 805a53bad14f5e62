# CPU-only image of kdmkb. BASE defaults to a public Python image; offline builds pass a
# locally imported base and a wheelhouse (see deploy/README.md).
ARG BASE=python:3.11-slim
FROM ${BASE}
WORKDIR /opt/kdmkb
COPY . /opt/kdmkb
ARG PIP_OPTIONS=""
RUN python3 -m pip install --no-cache-dir ${PIP_OPTIONS} torch==2.13.0 . && useradd --create-home kdmkb
USER kdmkb
ENTRYPOINT []
