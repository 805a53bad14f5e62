"""Process entry points and cross-cutting runtime: CLI, configuration, metrics, logging, Ray set-up."""
