from django.contrib import admin

from fleet.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor_name", "actor_role", "action", "object_repr", "result")
    list_filter = ("result", "actor_role")
    search_fields = ("actor_name", "action", "object_repr", "path")
    readonly_fields = [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
