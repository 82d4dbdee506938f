"""`{% load job_text %}`: what a job stored in English, in the reader's language
(`compression.display`)."""

from __future__ import annotations

from django import template

from compression import display
from compression.choices import JOB_KPIS

register = template.Library()


@register.filter
def job_text(value) -> str:
    """A step, an error or a verdict; a list (KPI violations) joined with '; '."""
    if isinstance(value, list | tuple):
        return "; ".join(display.localize(v) for v in value)
    return display.localize(value)


@register.filter
def job_log_line(value) -> str:
    return display.log_line(value)


@register.filter
def job_reason(result, candidates=None) -> str:
    """`{{ job.result|job_reason:candidates }}`: the candidates name the verdicts."""
    recipes = [c.recipe for c in candidates or [] if c.recipe != "fp32"]
    return display.reason(result, recipes)


@register.filter
def kpi_label(name: str) -> str:
    """A KPI's key as its form label ("Max latency p50 (ms)"); unknown keys as stored."""
    return str(JOB_KPIS[name][0]) if name in JOB_KPIS else name
