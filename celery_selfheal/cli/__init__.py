"""The `selfheal` command line (also `celery -A APP selfheal`)."""
