"""Schedules distillation rounds and routes soft labels between KB workers; never trains."""
