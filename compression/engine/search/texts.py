"""Every sentence the search writes into a report, as %-templates.

The engine stays Django-free and writes English; these templates are also the
gettext msgids (`gettext_noop` below only marks them for `makemessages`), so the
server's pages turn a stored English sentence back into template + params and
show it in the reader's language (`compression.display`). Change a template
here and both sides follow; params are formatted before they go in.
"""

from __future__ import annotations


def gettext_noop(message: str) -> str:
    """Marks a msgid for `makemessages` (the same name Django's marker has)."""
    return message


# progress steps
STEP_MEASURE_FP32 = gettext_noop("fp32: measure")
STEP_BUILD_BATCH = gettext_noop("building %(n)s candidates (one calibration for the grid)")
STEP_COMPRESS = gettext_noop("%(recipe)s: compress")
STEP_TIME = gettext_noop("timing every candidate against fp32")
STEP_NEIGHBOURS = gettext_noop("neighbours of the fastest int8 point")
STEP_EVALUATE = gettext_noop("evaluating what can win")
STEP_ENTROPY = gettext_noop("%(recipe)s: entropy calibration")
STEP_EXCLUSION = gettext_noop("%(recipe)s: sensitivity-guided exclusion")
STEP_REMEASURE = gettext_noop("re-measuring the finalists")
STEP_DONE = gettext_noop("done")

# KPI violations
P50_OVER = gettext_noop("p50 %(p50)s ms > %(limit)s ms")
SIZE_OVER = gettext_noop("size %(size)s MB > %(limit)s MB")
ACCURACY_UNKNOWN = gettext_noop(
    "accuracy unknown (not evaluated, or the evaluation set has no labels)"
)
ACCURACY_DROP_OVER = gettext_noop("accuracy drop %(drop)s pt > %(limit)s pt")
FIDELITY_UNKNOWN = gettext_noop("fidelity unknown")
FIDELITY_UNDER = gettext_noop("fidelity %(fidelity)s < %(limit)s (%(metric)s)")
FAILED = gettext_noop("failed: %(error)s")
NOT_MEASURED = gettext_noop("not measured")
NOT_EVALUATED = gettext_noop("not evaluated")
SKIP_MISSES_ALREADY = gettext_noop("not evaluated: misses a latency/size KPI already")
SKIP_CANNOT_WIN = gettext_noop(
    "not evaluated: cannot win (slower and not clearly smaller than %(recipe)s, which meets "
    "every KPI)"
)
SKIP_NO_GAIN = gettext_noop("not evaluated: neither faster nor smaller than fp32")
EVALUATION_STOPPED = gettext_noop(
    "evaluation stopped after %(samples)s of %(total)s samples: it could no longer reach the "
    "KPIs (its figures are the best it could still have reached)"
)

# verdicts per candidate
CHOSEN = gettext_noop("chosen")
MISSES = gettext_noop("misses: %(violations)s")
THE_ORIGINAL = gettext_noop("the original")
NO_FASTER = gettext_noop("no faster than fp32 (%(ratio)sx)")
SLOWER_THAN_CHOSEN = gettext_noop("slower than the chosen variant (%(ratio)sx vs %(best)sx)")
TIES_BUT_LARGER = gettext_noop("ties on latency (%(ratio)sx) but is larger")
RECIPE_VERDICT = gettext_noop("%(recipe)s: %(verdict)s")

# the reason for the choice: sentences, each one of these
NOTHING_MEASURED = gettext_noop("No candidate could be measured.")
NONE_MEETS = gettext_noop(
    "No candidate meets the KPIs; closest is %(recipe)s (%(violations)s). "
    "See the Pareto front for the best trade-offs."
)
ORIGINAL_STAYS = gettext_noop(
    "No variant is faster than fp32 beyond the measurement noise (%(noise)s %%) or "
    "clearly smaller; the original stays the best choice."
)
FASTEST_MEETS = gettext_noop(
    "%(recipe)s meets every KPI and is the fastest (p50 %(p50)s ms, %(ratio)sx fp32 latency "
    "measured interleaved, %(size_ratio)sx size; smaller wins among ties within %(noise)s %%)."
)
WHY_NOT_BEATEN = gettext_noop("Why no variant beats fp32: %(why)s.")
DEFAULT_FLOOR = gettext_noop(
    "No fidelity or accuracy KPI was set: the default quality floor "
    "(fidelity >= %(floor)s) applied."
)
LATENCY_ONLY = gettext_noop("Latency-only mode: inputs were generated, fidelity is unknown.")
BUDGET_REACHED = gettext_noop("Budget of %(budget)s s reached; not tried: %(skipped)s.")

TEMPLATES = tuple(v for k, v in sorted(globals().items()) if k.isupper() and isinstance(v, str))
