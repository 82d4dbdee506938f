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


@register.filter(name="shape")
def tensor_shape(value) -> str:
    """['batch', 1, 16, 16] -> 'batch × 1 × 16 × 16'; unknown dims shown as '?'."""
    if not isinstance(value, list | tuple):
        return "—" if value in (None, "") else str(value)
    return " × ".join("?" if d in (None, "") else str(d) for d in value) or "scalar"
