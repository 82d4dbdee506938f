from django import forms
from django.utils.translation import gettext_lazy as _

from compression.choices import DatasetPurpose, ModelTask
from compression.models import MLModel


class ModelUploadForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    task = forms.ChoiceField(label=_("Task"), choices=ModelTask.choices)
    description = forms.CharField(label=_("Description"), required=False, widget=forms.Textarea(
        attrs={"rows": 2}))
    file = forms.FileField(label=_("ONNX file"), widget=forms.ClearableFileInput(
        attrs={"accept": ".onnx"}))

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        if MLModel.objects.filter(name=name).exists():
            raise forms.ValidationError(_("A model with this name already exists."))
        return name


class VersionUploadForm(forms.Form):
    file = forms.FileField(label=_("ONNX file"), widget=forms.ClearableFileInput(
        attrs={"accept": ".onnx"}))
    notes = forms.CharField(label=_("Notes"), required=False)


class DatasetUploadForm(forms.Form):
    name = forms.CharField(label=_("Name"), max_length=120)
    purpose = forms.ChoiceField(label=_("Purpose"), choices=DatasetPurpose.choices)
    file = forms.FileField(label=_(".npz file"), widget=forms.ClearableFileInput(
        attrs={"accept": ".npz"}))
