from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from compression.choices import JOB_KPIS, DatasetPurpose, JobMode, ModelTask
from compression.engine.search import DEFAULT_QUALITY_FLOOR
from compression.jobs import MAX_BUDGET_S, MIN_BUDGET_S
from compression.models import Dataset, MLModel
from compression.workers import training_workers


class ModelUploadForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    task = forms.ChoiceField(label=_("Task"), choices=ModelTask.choices)
    description = forms.CharField(
        label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 2})
    )
    file = forms.FileField(
        label=_("ONNX file"), widget=forms.ClearableFileInput(attrs={"accept": ".onnx"})
    )

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if MLModel.objects.filter(name=name).exists():
            raise forms.ValidationError(_("A model with this name already exists."))
        return name


class VersionUploadForm(forms.Form):
    file = forms.FileField(
        label=_("ONNX file"), widget=forms.ClearableFileInput(attrs={"accept": ".onnx"})
    )
    notes = forms.CharField(label=_("Notes"), required=False)


class DatasetUploadForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    purpose = forms.ChoiceField(label=_("Purpose"), choices=DatasetPurpose.choices)
    file = forms.FileField(
        label=_(".npz file"), widget=forms.ClearableFileInput(attrs={"accept": ".npz"})
    )


# What each pass does, for the job form (a chained recipe shows its passes in order).
PASS_DESCRIPTIONS = {
    "prepare": _("shape inference and constant folding"),
    "optimize": _("onnxruntime graph optimizations (fusions)"),
    "fp16": _("weights and activations in half precision: about ½ the size"),
    "int8-dynamic": _("int8 weights, activations quantized at run time: no calibration data"),
    "int8-static": _("int8 weights and activations, ranges from the calibration data"),
    "int8-nncf": _("int8 with NNCF's accuracy-aware calibration"),
    "mixed-precision": _("int8 where the accuracy allows, float elsewhere"),
    "prune-unstructured": _("zeroes the smallest weights (smaller once compressed)"),
    "prune-structured": _("removes whole channels: fewer parameters and faster"),
    "distill": _("trains a smaller student on the original's outputs (training extra)"),
    "qat": _("quantization-aware training, then int8 (training extra)"),
}


def recipe_description(recipe: str) -> str:
    return " → ".join(str(PASS_DESCRIPTIONS.get(step, step)) for step in recipe.split("+"))


def _recipe_choices():
    from compression.engine.recipes import list_recipes

    return [(r, format_lazy("{} — {}", r, recipe_description(r))) for r in list_recipes()]


class JobForm(forms.Form):
    """Start a compression job from a version; choices are limited to that model's data."""

    mode = forms.ChoiceField(
        label=_("Mode"), choices=JobMode.choices, initial=JobMode.AUTO, widget=forms.RadioSelect
    )
    recipes = forms.MultipleChoiceField(
        label=_("Recipes"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_(
            "Explicit mode runs these; auto mode searches them (none ticked: the "
            "default search set)."
        ),
    )
    max_latency_ms = forms.FloatField(label=JOB_KPIS["max_latency_ms"][0], required=False)
    max_accuracy_drop = forms.FloatField(label=JOB_KPIS["max_accuracy_drop"][0], required=False)
    min_fidelity = forms.FloatField(
        label=JOB_KPIS["min_fidelity"][0],
        required=False,
        help_text=format_lazy(
            _(
                "Agreement with the original on each output's task metric (top-1 class, "
                "decoded sequence, exact index, box IoU or cosine). Left empty with no "
                "accuracy KPI: the default quality floor {floor} applies."
            ),
            floor=DEFAULT_QUALITY_FLOOR,
        ),
    )
    max_size_mb = forms.FloatField(label=JOB_KPIS["max_size_mb"][0], required=False)
    hardware_profile = forms.ModelChoiceField(
        label=_("Hardware profile"),
        queryset=None,
        required=False,
        help_text=_(
            "Latency is measured on this server with the profile's thread count: an "
            "estimate for the device."
        ),
    )
    calibration = forms.ModelChoiceField(label=_("Calibration data"), queryset=None, required=False)
    calibration_file = forms.FileField(
        label=_("…or upload calibration .npz"),
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".npz"}),
    )
    evaluation = forms.ModelChoiceField(
        label=_("Evaluation data"),
        queryset=None,
        required=False,
        help_text=_(
            "Latency is timed on its samples' own shapes. None: latency-only mode "
            "(generated inputs, fidelity unknown)."
        ),
    )
    evaluation_file = forms.FileField(
        label=_("…or upload evaluation .npz"),
        required=False,
        widget=forms.ClearableFileInput(attrs={"accept": ".npz"}),
    )
    # The bounds are create_job's rule (its refusal lands on this field); the widget
    # only shows them.
    time_budget_s = forms.IntegerField(
        label=_("Time budget (s)"),
        initial=600,
        widget=forms.NumberInput(attrs={"min": MIN_BUDGET_S, "max": MAX_BUDGET_S}),
    )
    training = forms.BooleanField(
        label=_("Auto: also train (QAT; pruning is fine-tuned)"),
        required=False,
        help_text=_("Training recipes run on a worker with the training extra (PyTorch)."),
    )
    epochs = forms.IntegerField(
        label=_("Training epochs (distill, QAT)"), required=False, min_value=1, max_value=200
    )
    finetune_epochs = forms.IntegerField(
        label=_("Pruning fine-tune epochs"),
        required=False,
        min_value=0,
        max_value=200,
        help_text=_("0 turns the recovery fine-tune off; empty: the default."),
    )
    distill_student = forms.ModelChoiceField(
        label=_("Distillation student"),
        queryset=None,
        required=False,
        empty_label=_("a pruned copy of this version"),
    )
    distill_ratio = forms.FloatField(
        label=_("Student channel ratio removed (0–1)"),
        required=False,
        min_value=0.05,
        max_value=0.95,
    )

    benchmark_groups = forms.ModelMultipleChoiceField(
        label=_("Benchmark on devices: groups"), queryset=None, required=False
    )
    benchmark_profiles = forms.ModelMultipleChoiceField(
        label=_("…or hardware profiles"), queryset=None, required=False, to_field_name="slug"
    )
    benchmark_devices = forms.CharField(
        label=_("…or device ids"),
        required=False,
        max_length=4000,
        help_text=_("Separated by spaces or commas."),
    )
    choose_by_devices = forms.BooleanField(
        label=_("Choose by device results"),
        required=False,
        help_text=_(
            "The variant with the lowest p50 measured on the devices is chosen among those "
            "meeting every KPI; at the timeout the server's estimate decides."
        ),
    )
    device_timeout_s = forms.IntegerField(
        label=_("Wait for device results (s)"), required=False, min_value=60
    )

    def __init__(self, *args, model: MLModel, **kwargs):
        from devices.models import DeviceGroup, HardwareProfile

        super().__init__(*args, **kwargs)
        self.fields["recipes"].choices = _recipe_choices()
        self.fields["distill_student"].queryset = model.versions.order_by("-number")
        self.training_workers = training_workers()
        self.fields["training"].initial = bool(self.training_workers)
        self.fields["hardware_profile"].queryset = HardwareProfile.objects.order_by("name")
        self.fields["benchmark_profiles"].queryset = HardwareProfile.objects.order_by("name")
        self.fields["benchmark_groups"].queryset = DeviceGroup.objects.order_by("name")
        datasets = Dataset.objects.filter(model=model)
        self.fields["calibration"].queryset = datasets.filter(purpose=DatasetPurpose.CALIBRATION)
        self.fields["evaluation"].queryset = datasets.filter(purpose=DatasetPurpose.EVALUATION)
        for name in ("calibration", "evaluation"):
            first = self.fields[name].queryset.first()
            if first is not None:
                self.fields[name].initial = first.pk

    def options(self) -> dict:
        data = self.cleaned_data
        distill = {
            "ratio": data.get("distill_ratio"),
            "student_version": data["distill_student"].pk if data.get("distill_student") else None,
        }
        return {
            "training": bool(data.get("training")),
            "epochs": data.get("epochs"),
            "finetune_epochs": data.get("finetune_epochs"),
            "distill": {k: v for k, v in distill.items() if v is not None},
            "device_benchmark": self.device_benchmark(),
        }

    def device_benchmark(self) -> dict | None:
        """The job option `device_benchmark` (checked by create_job), None when unasked."""
        data = self.cleaned_data
        target = {
            "groups": [g.name for g in data.get("benchmark_groups") or []],
            "hardware_profiles": [p.slug for p in data.get("benchmark_profiles") or []],
            "devices": (data.get("benchmark_devices") or "").replace(",", " ").split(),
        }
        target = {k: v for k, v in target.items() if v}
        if not target and not data.get("choose_by_devices"):
            return None
        option = {"target": target, "choose": bool(data.get("choose_by_devices"))}
        if data.get("device_timeout_s") is not None:
            option["timeout_s"] = data["device_timeout_s"]
        return option

    def uploads(self) -> dict:
        """Datasets uploaded inline: purpose → file (it replaces the chosen dataset)."""
        data = self.cleaned_data
        return {p: data[f"{p}_file"] for p in DatasetPurpose.values if data.get(f"{p}_file")}

    def kpis(self) -> dict:
        return {k: self.cleaned_data[k] for k in JOB_KPIS if self.cleaned_data.get(k) is not None}
