"""`push` and `compress`: register a model, derive and measure variants under KPIs."""

from __future__ import annotations

import time
from pathlib import Path

from . import BAD_INPUT, ERROR, MISSED, OK, TIMEOUT, CliError
from .output import Progress, dump_json, note, table

# A version the server is still checking (validation on a worker) and what a refusal looks like.
PENDING_VERSION = {"validating", "pending", "queued", "uploading"}
REJECTED_VERSION = {"rejected", "invalid", "failed"}
JOB_LIVE = {"queued", "running"}
KPI_FLAGS = {
    "max_latency_ms": "--max-latency-ms",
    "min_fidelity": "--min-fidelity",
    "max_accuracy_drop": "--max-accuracy-drop",
    "max_size_mb": "--max-size-mb",
}


def _file(value: str | None, suffix: str, what: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise CliError(f"{what} {value}: no such file", BAD_INPUT)
    if path.suffix.lower() != suffix:
        raise CliError(f"{what} {value}: expected a {suffix} file", BAD_INPUT)
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise CliError(f"{what} {value}: {exc.strerror}", BAD_INPUT) from None
    return path


def push(client, args) -> int:
    files = {"file": _file(args.model, ".onnx", "model")}
    for field, value, what in (
        ("calibration", args.calibration, "calibration data"),
        ("evaluation", args.eval, "evaluation data"),
    ):
        if value is not None:
            files[field] = _file(value, ".npz", what)
    fields = {"name": args.name, "task": args.task, "notes": args.notes or ""}
    answer = client.post_files("/api/v1/push/", fields, files)
    version = wait_validated(client, answer["version"], args.timeout)
    answer["version"] = version
    if args.json:
        dump_json(answer)
    else:
        datasets = ", ".join(
            f"{k} dataset {answer[k]}" for k in ("calibration", "evaluation") if answer.get(k)
        )
        note(
            f"{version['model_name']} v{version['number']} (version id {version['id']}, "
            f"sha256 {version['sha256'][:12]}): "
            f"{'new' if answer['created'] else 'unchanged, same bytes'}"
            f"{'; ' + datasets if datasets else ''}"
        )
        print(version["id"])
    return OK


def wait_validated(client, version: dict, timeout: float) -> dict:
    """Poll (bounded) while the server still validates the upload; a refusal is bad input."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while str(version.get("status", "")).lower() in PENDING_VERSION:
        if time.monotonic() > deadline:
            raise CliError(
                f"version {version['id']} still {version['status']} after "
                f"{timeout:.0f} s; it may still be accepted (check it later)",
                TIMEOUT,
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
        version = client.get(
            f"/api/v1/versions/{version['id']}/",
            not_found=(f"the server rejected the model and removed version {version['id']}"),
        )
    if str(version.get("status", "")).lower() in REJECTED_VERSION:
        reason = (
            version.get("error")
            or version.get("rejection")
            or version.get("detail")
            or "no reason given"
        )
        raise CliError(f"the server rejected the model: {reason}", BAD_INPUT)
    return version


def _latest_dataset(client, model_id: int, purpose: str) -> int | None:
    page = client.get("/api/v1/datasets/", {"model": model_id, "purpose": purpose, "page_size": 1})
    results = page.get("results", []) if isinstance(page, dict) else []
    return results[0]["id"] if results else None


def compress(client, args) -> int:
    kpis = {name: getattr(args, name) for name in KPI_FLAGS if getattr(args, name) is not None}
    version = client.get(
        f"/api/v1/versions/{args.version}/", not_found=f"unknown model version {args.version}"
    )
    evaluation = args.eval_dataset or _latest_dataset(client, version["model"], "evaluation")
    if evaluation is None:
        raise CliError(
            f"model {version['model_name']} has no evaluation dataset: push it with "
            "--eval, or pass --eval-dataset ID",
            BAD_INPUT,
        )
    calibration = args.calibration_dataset or _latest_dataset(
        client, version["model"], "calibration"
    )
    payload = {
        "source": version["id"],
        "mode": "recipes" if args.recipe else "auto",
        "recipes": args.recipe or [],
        "kpis": kpis,
        "evaluation": evaluation,
        "calibration": calibration,
        "time_budget_s": args.time_budget,
    }
    if args.profile:
        payload["hardware_profile"] = args.profile
    benchmark = device_benchmark(args)
    if benchmark:
        payload["options"] = {"device_benchmark": benchmark}
    job = client.post("/api/v1/jobs/", payload)
    if not args.wait:
        if args.json:
            dump_json(job)
        else:
            note(f"compression job {job['id']} queued (edgefleet compress ... --wait to follow it)")
            print(job["id"])
        return OK
    job = follow_job(client, job, args.timeout, quiet=args.json)
    return report_job(job, kpis, as_json=args.json)


def device_benchmark(args) -> dict | None:
    """The job option of the --bench-* flags (the server checks it)."""
    target = {
        "groups": args.bench_group or [],
        "hardware_profiles": args.bench_profile or [],
        "devices": args.bench_device or [],
    }
    target = {k: v for k, v in target.items() if v}
    if not target and not args.choose_by_devices and args.device_timeout is None:
        return None
    option = {"target": target, "choose": args.choose_by_devices}
    if args.device_timeout is not None:
        option["timeout_s"] = args.device_timeout
    return option


def follow_job(client, job: dict, timeout: float, *, quiet: bool) -> dict:
    progress = None if quiet else Progress(f"job {job['id']}")
    deadline = time.monotonic() + timeout
    try:
        while job["status"] in JOB_LIVE or _devices_deciding(job):
            state = "waiting for device results" if _devices_deciding(job) else job["status"]
            if progress:
                progress.update(job.get("progress"), job.get("current_step") or state)
            if time.monotonic() > deadline:
                raise CliError(
                    f"job {job['id']} still {state} after {timeout:.0f} s; "
                    "it goes on on the server",
                    TIMEOUT,
                )
            time.sleep(1.0)
            job = client.get(f"/api/v1/jobs/{job['id']}/")
        if progress:
            progress.update(
                1.0 if job["status"] == "succeeded" else job.get("progress"), job["status"]
            )
    finally:
        if progress:
            progress.done()
    return job


def _devices_deciding(job: dict) -> bool:
    """A succeeded job whose devices' results will choose, not decided yet."""
    option = (job.get("options") or {}).get("device_benchmark") or {}
    return (
        job["status"] == "succeeded"
        and bool(option.get("choose"))
        and job.get("device_choice") in ("", "waiting")
    )


def report_job(job: dict, kpis: dict, *, as_json: bool) -> int:
    candidates = job.get("candidates") or []
    meeting = [c for c in candidates if c.get("meets_kpis") and not c.get("error")]
    chosen = next((c for c in candidates if c.get("chosen")), None)
    if job.get("device_choice") == "measured":  # the devices' measurements decided
        meeting = [chosen] if chosen else []
    decided = ((job.get("result") or {}).get("device_choice") or {}).get("reason")
    code = ERROR if job["status"] != "succeeded" else (OK if meeting else MISSED)
    if as_json:
        dump_json({"job": job, "meets_kpis": code == OK, "chosen": chosen, "exit_code": code})
        return code
    if job["status"] != "succeeded":
        raise CliError(
            f"job {job['id']} {job['status']}: {job.get('error') or 'no error given'}", ERROR
        )
    rows = []
    for c in candidates:
        m = c.get("metrics") or {}
        rows.append(
            [
                "*" if c.get("chosen") else "",
                c["recipe"],
                c.get("version"),
                m.get("size_mb"),
                m.get("p50_ms"),
                m.get("p95_ms"),
                m.get("accuracy"),
                m.get("fidelity"),
                c.get("meets_kpis"),
                c.get("error") or "; ".join(c.get("violations") or []) or "",
            ]
        )
    table(
        [
            "",
            "recipe",
            "version",
            "size MB",
            "p50 ms",
            "p95 ms",
            "accuracy",
            "fidelity",
            "meets KPIs",
            "why not",
        ],
        rows,
    )
    wanted = ", ".join(f"{KPI_FLAGS[k]} {v:g}" for k, v in kpis.items()) or "no KPIs"
    if decided:
        note(f"job {job['id']}, on devices: {decided}")
    if code == OK:
        note(
            f"job {job['id']}: {len(meeting)} of {len(candidates)} candidates meet {wanted}; "
            f"chosen {chosen['recipe']} (version {chosen['version']})"
            if chosen
            else f"job {job['id']}: {len(meeting)} candidates meet {wanted}"
        )
    else:
        reason = (job.get("result") or {}).get("reason")
        note(f"job {job['id']}: no candidate meets {wanted}{' — ' + reason if reason else ''}")
    return code
