"""How a job reads on the pages: what the engine and the runner stored in English
(steps, log lines, the reason for the choice, KPI violations, errors) in the
reader's language.

The stored text stays English (the API's fields keep their meaning); each
sentence was written from a %-template that is also a msgid
(`compression.engine.search.texts`, `compression.progress`), so it is matched back
to its template and params here, and shown as `gettext(template) % params`, params
translated the same way (a verdict inside a reason). Text that matches no
template (an engine error's own message) is shown as stored.
"""

from __future__ import annotations

import re
from functools import cache

from django.utils.translation import gettext

from compression.engine.search.texts import RECIPE_VERDICT, WHY_NOT_BEATEN
from compression.engine.search.texts import TEMPLATES as ENGINE_TEXTS
from compression.progress import TEXTS as JOB_TEXTS

_PARAM = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?[sdifgr]")
_CLOCK = re.compile(r"^(\d\d:\d\d:\d\d )(.*)$", re.S)


def _pattern(template: str) -> re.Pattern:
    parts, last = [], 0
    for match in _PARAM.finditer(template):
        parts.append(re.escape(template[last : match.start()].replace("%%", "%")))
        parts.append(f"(?P<{match.group(1)}>.+?)")
        last = match.end()
    parts.append(re.escape(template[last:].replace("%%", "%")))
    return re.compile("".join(parts), re.S)


@cache
def _patterns() -> list[tuple[re.Pattern, str]]:
    """Most literal text first: 'failed: %(error)s' before 'p50 %(p50)s ms > ...'.
    "recipe: verdict" matches nearly anything: only `reason` uses it, where the
    recipes are known."""
    templates = {*ENGINE_TEXTS, *JOB_TEXTS} - {RECIPE_VERDICT}
    ordered = sorted(templates, key=lambda t: -len(_PARAM.sub("", t).replace("%%", "%")))
    return [(_pattern(t), t) for t in ordered]


def _match(text: str, depth: int) -> str | None:
    for pattern, template in _patterns():
        match = pattern.fullmatch(text)
        if match:
            params = {k: localize(v, depth + 1) for k, v in match.groupdict().items()}
            return gettext(template) % params
    return None


def localize(text, depth: int = 0) -> str:
    """One stored English sentence in the active language; as stored when unknown."""
    if not isinstance(text, str) or not text or depth > 4:
        return "" if text is None else str(text)
    if "; " in text:  # a list of violations, when each item is one
        items = [_match(item, depth) for item in text.split("; ")]
        if all(item is not None for item in items):
            return "; ".join(items)
    found = _match(text, depth)
    return text if found is None else found


def log_line(line: str) -> str:
    """'12:03:04 fp32: measure' -> the time, then the step in the reader's language."""
    match = _CLOCK.match(line or "")
    return match.group(1) + localize(match.group(2)) if match else localize(line)


def _why(part: str, recipes: list[str]) -> str | None:
    """'Why no variant beats fp32: a: <verdict>; b: <verdict>.' -- a verdict may hold
    '; ' itself, so the entries are cut at the recipe names, in the report's order."""
    match = _pattern(WHY_NOT_BEATEN).fullmatch(part)
    if not match or not recipes:
        return None
    entries = "; ".join(f"({re.escape(r)}): (.*?)" for r in recipes)
    found = re.fullmatch(entries, match.group("why"), re.S)
    if not found:
        return None
    pairs = zip(found.groups()[::2], found.groups()[1::2], strict=True)
    why = "; ".join(
        gettext(RECIPE_VERDICT) % {"recipe": r, "verdict": localize(v)} for r, v in pairs
    )
    return gettext(WHY_NOT_BEATEN) % {"why": why}


def reason(result: dict | None, recipes: list[str] | None = None) -> str:
    """The reason for the choice: its sentences translated one by one (a job stored
    before the sentences were kept: the whole reason, as far as it matches).
    `recipes`: the job's candidates but fp32, in order (they name the verdicts)."""
    result = result or {}
    parts = result.get("reason_parts")
    if not parts:
        return localize(result.get("reason") or "")
    return " ".join(_why(p, recipes or []) or localize(p) for p in parts)
