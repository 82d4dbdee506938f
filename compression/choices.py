from django.db import models
from django.utils.translation import gettext_lazy as _


class ModelTask(models.TextChoices):
    CLASSIFICATION = "classification", _("Image classification")
    DETECTION = "detection", _("Object detection")
    SEGMENTATION = "segmentation", _("Segmentation")
    REGRESSION = "regression", _("Regression / sensor model")
    ANOMALY = "anomaly", _("Anomaly detection")
    OTHER = "other", _("Other")


class DatasetPurpose(models.TextChoices):
    CALIBRATION = "calibration", _("Calibration")
    EVALUATION = "evaluation", _("Evaluation")
