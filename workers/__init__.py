"""herdless workers: the Celery app, the refresh task, origin breakers and the worker metrics endpoint."""
