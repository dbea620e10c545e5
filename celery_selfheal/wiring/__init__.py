"""Thin Celery wiring: the step task, queue routing, signals, remote-control commands, install."""
