"""Pure logic: no I/O, no Celery import. Everything here is tested with plain function calls."""
