"""Wall time of one compression job of a MobileNetV2-size model, default recipe set.

Runs the same code a worker runs (`compression.runner.run_job`): fetch from
storage, run and measure every recipe, register every variant as a version.
It uses a throw-away SQLite database and media folder in a temp directory,
never your `var/`. Target: under 3 minutes on a 2-core machine.

    .venv/bin/python benchmarks/jobs.py [--profile x86-gateway-2c] [--recipes a,b]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script: this checkout's packages (and `benchmarks`) come first on sys.path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402 - after the sys.path fix above
import atexit  # noqa: E402 - after the sys.path fix above
import os  # noqa: E402 - after the sys.path fix above
import shutil  # noqa: E402 - after the sys.path fix above
import tempfile  # noqa: E402 - after the sys.path fix above
import time  # noqa: E402 - after the sys.path fix above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="x86-gateway-2c")
    parser.add_argument("--recipes", default="", help="comma-separated; default DEFAULT_RECIPES")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgefleet-bench-jobs-"))
    atexit.register(shutil.rmtree, root, True)  # its SQLite database, media and data
    os.environ.update(
        EDGEFLEET_VAR_DIR=str(root),
        DATABASE_URL=f"sqlite:///{root}/db.sqlite3",
        MEDIA_ROOT=str(root / "media"),
        DJANGO_SETTINGS_MODULE="fleet.settings",
    )
    import django

    django.setup()
    from django.core.management import call_command

    from compression import jobs, runner, services
    from compression.choices import JobMode, ModelTask
    from compression.engine.recipes import DEFAULT_RECIPES
    from compression.fixtures.make_mobilenet import ensure_data
    from devices.models import HardwareProfile

    call_command("migrate", verbosity=0)
    model_path, cal_path, eval_path = ensure_data(root / "data")
    model = services.create_model(name="mobilenetv2", task=ModelTask.CLASSIFICATION)
    version = services.register_version(
        model, model_path, original_filename="mobilenetv2.onnx"
    ).version
    cal = services.register_dataset(
        cal_path, name="cal", purpose="calibration", original_filename="cal.npz", model=model
    )
    ev = services.register_dataset(
        eval_path, name="eval", purpose="evaluation", original_filename="eval.npz", model=model
    )
    profile = HardwareProfile.objects.get(slug=args.profile)
    recipes = [r for r in args.recipes.split(",") if r] or list(DEFAULT_RECIPES)
    job = jobs.create_job(
        version,
        mode=JobMode.RECIPES,
        recipes=recipes,
        hardware_profile=profile,
        calibration=cal,
        evaluation=ev,
        time_budget_s=1800,
        enqueue=False,
    )
    started = time.monotonic()
    outcome = runner.run_job(job.pk)
    wall = time.monotonic() - started
    job.refresh_from_db()
    print(
        f"model {version.size_bytes / 1e6:.1f} MB, {version.parameters} params; "
        f"profile {profile.slug} ({job.result.get('threads')} thread(s)); {os.cpu_count()} cores"
    )
    print(f"{'recipe':<22} {'p50 ms':>9} {'p50 x':>7} {'size x':>7} {'fidelity':>9}  error")
    for c in job.candidates.order_by("pk"):
        m = c.metrics or {}
        print(
            f"{c.recipe:<22} {m.get('p50_ms', float('nan')):>9.2f} "
            f"{m.get('p50_ratio', float('nan')):>7.2f} {m.get('size_ratio', float('nan')):>7.2f} "
            f"{m.get('fidelity') if m.get('fidelity') is not None else float('nan'):>9.4f}  "
            f"{c.error[:60]}"
        )
    print(
        f"job {outcome}: {len(recipes)} recipes + fp32 measured and registered in {wall:.1f} s "
        f"wall (engine search {job.result.get('seconds')} s); target < 180 s"
    )
    return 0 if outcome == "succeeded" and wall < 180 else 1


if __name__ == "__main__":
    sys.exit(main())
