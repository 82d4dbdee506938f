from django.contrib import admin

from compression.models import Dataset, MLModel, ModelVersion


@admin.register(MLModel)
class MLModelAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "owner", "created_at")
    search_fields = ("name",)


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("model", "number", "sha256", "size_bytes", "created_at")
    list_filter = ("model",)
    readonly_fields = ("sha256", "artifact", "size_bytes")


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "purpose", "model", "sample_count", "created_at")
