"""What a job stored in English reads in the reader's language on its pages, and the
API keeps the English."""

from __future__ import annotations

import re
from datetime import timedelta

import polib
import pytest
from django.utils import timezone, translation

from compression import display, progress
from compression.choices import JobStatus
from compression.engine.search import decide
from compression.engine.search import texts as T
from compression.models import Candidate, CompressionJob
from fleet.translations import LOCALE_DIR
from tests.compression.jobs_support import load_demo

PO = LOCALE_DIR / "zh_Hans" / "LC_MESSAGES" / "django.po"
TEMPLATES = sorted({*T.TEMPLATES, *progress.TEXTS} - {T.RECIPE_VERDICT})
PARAM = re.compile(r"%\((\w+)\)")


@pytest.fixture(autouse=True)
def _language_restored():
    """A zh-Hans request activates zh-Hans in this thread: later tests get it back."""
    with translation.override("en"):
        yield


def _sample(template: str) -> tuple[str, dict]:
    params = {name: f"x{i}" for i, name in enumerate(dict.fromkeys(PARAM.findall(template)))}
    return template % params, params


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_job_text_reads_back_to_its_template(template):
    """No template is taken for another: each sample comes back as itself in English
    and as its own msgstr in Chinese."""
    text, params = _sample(template)
    with translation.override("en"):
        assert display.localize(text) == text
    with translation.override("zh-hans"):
        chinese = display.localize(text)
        assert chinese == translation.gettext(template) % params
    if template not in ("p50 %(p50)s ms > %(limit)s ms",):  # the same in both languages
        assert chinese != text, f"{template!r} has no zh-Hans translation"


def test_job_texts_keep_their_placeholders_in_chinese():
    catalog = {e.msgid: e for e in polib.pofile(str(PO)) if not e.obsolete}
    for template in [*TEMPLATES, T.RECIPE_VERDICT]:
        entry = catalog.get(template)
        assert entry is not None and entry.msgstr and "fuzzy" not in entry.flags, template
        assert sorted(PARAM.findall(entry.msgstr)) == sorted(PARAM.findall(template)), template


@pytest.fixture
def finished_job(db):
    """A job as the runner leaves it, its sentences written by the engine's own code."""
    demo = load_demo()
    kpis = {"max_latency_ms": 1.0, "min_fidelity": 0.99}
    slow = {
        "p50_ms": 2.5,
        "p50_ratio": 0.8,
        "size_mb": 1.0,
        "size_ratio": 0.5,
        "size_bytes": 100,
        "fidelity": 0.9,
        "fidelity_metric": "top-1 (logits)",
    }
    fp32 = {**slow, "p50_ms": 3.1, "p50_ratio": 1.0, "size_ratio": 1.0, "fidelity": 1.0}
    cands = [
        {"recipe": "fp32", "metrics": fp32, "violations": decide.violations(fp32, kpis)},
        {"recipe": "int8-static", "metrics": slow, "violations": decide.violations(slow, kpis)},
        {"recipe": "fp16", "metrics": slow, "violations": [T.SKIP_MISSES_ALREADY]},
    ]
    chosen, reason = decide.choose(cands)
    assert chosen is None
    for c in cands:
        c["verdict"] = decide.verdict(c, chosen, None)
    why = "; ".join(
        T.RECIPE_VERDICT % {"recipe": c["recipe"], "verdict": c["verdict"]} for c in cands[1:]
    )
    parts = [
        reason,
        T.WHY_NOT_BEATEN % {"why": why},
        T.LATENCY_ONLY,
        T.BUDGET_REACHED % {"budget": "60", "skipped": "qat"},
    ]
    steps = [
        progress.ATTEMPT % {"n": 1, "h": "worker-1"},
        progress.MEASURING % {"t": 1, "p": "CPUExecutionProvider"},
        T.STEP_MEASURE_FP32,
        T.STEP_BUILD_BATCH % {"n": 3},
        T.STEP_TIME,
        T.STEP_EVALUATE,
        T.STEP_REMEASURE,
        progress.REGISTERING % {"r": "int8-static"},
        T.STEP_DONE,
    ]
    now = timezone.now()
    job = CompressionJob.objects.create(
        source=demo.version,
        kpis=kpis,
        status=JobStatus.SUCCEEDED,
        progress=1.0,
        current_step=T.STEP_DONE,
        log=[f"12:00:{i:02d} {s}" for i, s in enumerate(steps)],
        started_at=now - timedelta(hours=1, minutes=5),
        finished_at=now,
        result={"chosen": None, "reason": " ".join(parts), "reason_parts": parts},
    )
    for c in cands:
        Candidate.objects.create(
            job=job, recipe=c["recipe"], metrics=c["metrics"], violations=c["violations"]
        )
    return job, steps, parts


ENGLISH = [
    "attempt 1 on",
    "measuring with",
    "fp32: measure",
    "candidates (one calibration",
    "timing every candidate",
    "evaluating what can win",
    "re-measuring the finalists",
    "registering int8-static",
    ">done<",
    "No candidate meets the KPIs",
    "closest is",
    "Why no variant beats fp32",
    "misses:",
    "fidelity 0.9000 <",
    "Latency-only mode",
    "Budget of 60 s",
    "not evaluated",
    "1 h 5 min",
]


def test_job_page_in_chinese_shows_no_english_job_text(client, viewer_user, finished_job):
    job, _steps, _parts = finished_job
    client.force_login(viewer_user)
    english = client.get(f"/models/jobs/{job.pk}/").content.decode()
    assert "No candidate meets the KPIs" in english and "fp32: measure" in english
    text = client.get(f"/models/jobs/{job.pk}/", HTTP_ACCEPT_LANGUAGE="zh-Hans").content.decode()
    assert 'lang="zh-hans"' in text
    left = [s for s in ENGLISH if s in text]
    assert not left, f"English job text on the zh-Hans page: {left}"
    for chinese in ("没有候选满足 KPI", "fp32：测量", "已完成", "未达标", "1 小时 5 分"):
        assert chinese in text, chinese
    live = client.get(f"/models/jobs/{job.pk}/live/", HTTP_ACCEPT_LANGUAGE="zh-Hans")
    assert "已完成" in live.content.decode() and "timing every" not in live.content.decode()


def test_api_keeps_the_english(operator_api, finished_job):
    job, _steps, parts = finished_job
    body = operator_api.get(f"/api/v1/jobs/{job.pk}/", HTTP_ACCEPT_LANGUAGE="zh-Hans").json()
    assert body["current_step"] == "done"
    assert body["result"]["reason"] == " ".join(parts)
    assert body["log"][2].endswith("fp32: measure")


def test_unknown_text_is_shown_as_stored():
    with translation.override("zh-hans"):
        assert display.localize("onnxruntime says: Bad graph") != ""
        assert display.localize("something new") == "something new"
        assert display.log_line("12:00:00 something new") == "12:00:00 something new"
        assert display.reason({"reason": "An old free-form reason."}) == "An old free-form reason."
