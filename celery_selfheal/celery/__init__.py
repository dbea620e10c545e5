"""Thin Celery wiring: tasks, control commands, signals, the one-call install."""
