from django import template

register = template.Library()


@register.filter(name="bytes")
def human_bytes(value) -> str:
    """1536 -> '1.5 KB' (binary units, as file managers show them)."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
