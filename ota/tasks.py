from celery import shared_task

from ota import services


@shared_task(name="ota.tasks.evaluate_deployments")
def evaluate_deployments() -> dict:
    """Periodic: each deployment step is claimed by a conditional UPDATE, so
    overlapping or redelivered runs are harmless."""
    return {str(k): v for k, v in services.evaluate_deployments().items()}
