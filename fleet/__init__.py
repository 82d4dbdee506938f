"""The EdgeFleet Django project: settings, urls, celery app, accounts, audit."""

from fleet.celery import app as celery_app

__all__ = ["celery_app"]
