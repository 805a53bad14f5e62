# Prometheus for docker-compose.yml: Debian's build (one binary that needs only libc), which
# deploy/build-images.sh takes from the prometheus .deb. Python of the base runs the health check.
ARG BASE=python:3.11-slim
FROM ${BASE}
COPY build/docker/prometheus/prometheus build/docker/prometheus/promtool /usr/local/bin/
RUN mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
ENTRYPOINT ["prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090"]
