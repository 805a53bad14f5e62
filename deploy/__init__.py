"""Data only: installed as ``kdmkb.deploy`` (pyproject.toml's package-dir), so a wheel carries the
Prometheus configuration and alert rules and the Grafana provisioning that compose mounts from here."""
