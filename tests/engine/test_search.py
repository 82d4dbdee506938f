"""auto: every candidate measured, KPIs never violated by the choice, cancel and progress."""

from __future__ import annotations

import itertools
import json

import pytest

from compression.engine import Cancelled, PassConfigError
from compression.engine.search import auto

FAST = ("optimize", "int8-dynamic", "int8-static", "fp16", "prune-structured+optimize")


def _run(tmp_path, path, data, kpis, **kw):
    return auto(
        path,
        calibration_path=data,
        evaluation_path=data,
        kpis=kpis,
        out_dir=tmp_path / "auto",
        recipes=kw.pop("recipes", FAST),
        runs=10,
        **kw,
    )


def test_auto_measures_all_and_chooses_a_kpi_meeting_variant(tmp_path, cnn_path, cnn_data):
    steps = []
    r = _run(
        tmp_path,
        cnn_path,
        cnn_data,
        {"max_accuracy_drop": 5.0},
        progress=lambda f, s: steps.append((f, s)),
    )
    recipes = [c["recipe"] for c in r["candidates"]]
    assert recipes == ["fp32", *FAST]
    pruned = next(c for c in r["candidates"] if c["recipe"] == "prune-structured+optimize")
    assert pruned["metrics"]["size_ratio"] < 1  # conv2 -> pool -> fc is rewritten
    chosen = next(c for c in r["candidates"] if c["recipe"] == r["chosen"])
    assert chosen["meets_kpis"] and chosen["pareto"]
    fp32 = r["candidates"][0]["metrics"]
    assert chosen["metrics"]["p50_ms"] <= fp32["p50_ms"]
    assert r["pareto"] and all(c["pareto"] == (c["recipe"] in r["pareto"]) for c in r["candidates"])
    assert steps[0][1] == "fp32: measure" and steps[-1] == (1.0, "done")
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(steps))
    saved = json.loads((tmp_path / "auto" / "report.json").read_text())
    assert saved["chosen"] == r["chosen"]


def test_auto_never_returns_a_violator(tmp_path, cnn_path, cnn_data):
    r = _run(tmp_path, cnn_path, cnn_data, {"max_latency_ms": 1e-6}, recipes=("optimize", "fp16"))
    assert r["chosen"] is None
    assert "No candidate meets the KPIs" in r["reason"]
    assert all(not c["meets_kpis"] for c in r["candidates"])
    assert r["pareto"]  # best trade-offs are still returned


def test_auto_size_kpi(tmp_path, cnn_path, cnn_data):
    fp32_mb = (tmp_path / "x").parent.joinpath("cnn.onnx").stat().st_size / 1e6
    r = _run(
        tmp_path, cnn_path, cnn_data, {"max_size_mb": fp32_mb * 0.7}, recipes=("optimize", "fp16")
    )
    assert r["chosen"] == "fp16"


def test_auto_cancel_between_steps(tmp_path, cnn_path, cnn_data):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 2

    with pytest.raises(Cancelled):
        _run(tmp_path, cnn_path, cnn_data, {}, should_stop=stop)


def test_auto_budget_skips_remaining(tmp_path, cnn_path, cnn_data):
    r = _run(tmp_path, cnn_path, cnn_data, {}, budget_s=0)
    assert r["skipped"] == list(FAST)
    assert "Budget" in r["reason"]


def test_auto_rejects_unknown_kpi(tmp_path, cnn_path, cnn_data):
    with pytest.raises(PassConfigError, match="unknown KPI"):
        _run(tmp_path, cnn_path, cnn_data, {"max_latency": 3})


def test_auto_catches_the_dynamic_int8_trap_by_measurement(tmp_path, cnn_path, cnn_data):
    from compression.engine.benchmark import benchmark

    fp32_p50 = benchmark(cnn_path, runs=30)["latency_ms"]["p50"]
    r = _run(
        tmp_path,
        cnn_path,
        cnn_data,
        {"max_latency_ms": fp32_p50 * 1.5},
        recipes=("int8-dynamic", "optimize"),
    )
    dyn = next(c for c in r["candidates"] if c["recipe"] == "int8-dynamic")
    # ConvInteger has no fast CPU kernel: dynamic int8 is several times slower on a CNN
    assert dyn["metrics"]["p50_ratio"] > 1.5
    assert not dyn["meets_kpis"] and dyn["violations"][0].startswith("p50")
    assert r["chosen"] != "int8-dynamic"


def test_a_crashing_candidate_is_recorded_and_the_search_goes_on(
    tmp_path, cnn_path, cnn_data, monkeypatch
):
    from compression.engine import SandboxCrashed
    from compression.engine.search import candidates

    real = candidates.run_isolated

    def crash_fp16(func, *args, **kwargs):
        if func is candidates.compress_to_json and args[0] == "fp16":
            raise SandboxCrashed("the isolated process was killed by SIGSEGV")
        return real(func, *args, **kwargs)

    monkeypatch.setattr(candidates, "run_isolated", crash_fp16)
    r = _run(tmp_path, cnn_path, cnn_data, {}, recipes=("fp16", "optimize"))
    fp16 = next(c for c in r["candidates"] if c["recipe"] == "fp16")
    assert "SIGSEGV" in fp16["error"] and not fp16["meets_kpis"]
    assert r["chosen"] in {"fp32", "optimize"}


def test_auto_default_search_grid_floor_shapes_and_explanations(tmp_path, cnn_path, cnn_data):
    r = auto(
        cnn_path,
        calibration_path=cnn_data,
        evaluation_path=cnn_data,
        kpis={},
        out_dir=tmp_path / "auto",
        runs=10,
    )
    names = [c["recipe"] for c in r["candidates"]]
    assert "int8-static[qop,u8,per-tensor]" in names and "int8-static" in names
    assert r["default_quality_floor"] == 0.98 and r["kpis_applied"]["min_fidelity"] == 0.98
    assert "default quality floor" in r["reason"]
    assert r["measurement"]["shape_source"] == "data" and r["measurement"]["interleaved"]
    assert r["measurement"]["shape"] == "x [1, 3, 16, 16]"
    assert {c["metrics"]["timed_on"] for c in r["candidates"] if c["metrics"]} == {
        "x [1, 3, 16, 16] (data)"
    }
    # the fastest grid point's neighbours: one knob each, timed side by side with it
    neighbours = [c for c in r["candidates"] if c.get("neighbour_of")]
    assert {n["recipe"].rsplit(",", 1)[-1] for n in neighbours} >= {
        "reduce-range]",
        "sym-act]",
        "asym-w]",
    }
    assert all(n["metrics"] or n.get("error") for n in neighbours)
    assert "neighbours" in r["stage_seconds"]
    chosen = next(c for c in r["candidates"] if c["recipe"] == r["chosen"])
    assert chosen["metrics"]["fidelity"] >= 0.98
    # one prepare for the prepare candidate, the grid and int8-dynamic
    prepare = next(c for c in r["candidates"] if c["recipe"] == "prepare")
    assert prepare["path"] and prepare["metrics"]
    assert set(r["stage_cpu_seconds"]) == set(r["stage_seconds"])
    assert all(c["verdict"] for c in r["candidates"])
    if r["chosen"] == "fp32":
        assert "Why no variant beats fp32" in r["reason"]


def test_refine_tries_entropy_on_the_fastest_point_then_mixed_precision(
    tmp_path, cnn_path, cnn_data
):
    r = auto(
        cnn_path,
        calibration_path=cnn_data,
        evaluation_path=cnn_data,
        kpis={"min_fidelity": 1.01},  # nothing can meet it: every refinement runs
        out_dir=tmp_path / "auto",
        runs=10,
    )
    by = {c["recipe"]: c for c in r["candidates"]}
    entropy = [name for name in by if "entropy" in name]
    if not entropy:  # load noise timed no int8 point faster than fp32: nothing to refine
        return
    assert len(entropy) == 1 and by[entropy[0]]["evaluated"]
    fastest = entropy[0].replace(",entropy]", "]").replace("[entropy]", "")
    assert by[fastest]["base_recipe"] == "int8-static"  # the point it recalibrates
    assert by[entropy[0]]["overrides"]["calibrate_method"] == "entropy"
    assert any(name.startswith("mixed-precision") for name in by)
    assert r["chosen"] is None


def test_auto_latency_only_reports_fidelity_unknown(tmp_path, cnn_path):
    r = auto(
        cnn_path,
        calibration_path=None,
        evaluation_path=None,
        kpis={},
        out_dir=tmp_path / "auto",
        recipes=("optimize", "int8-static"),
        runs=10,
    )
    assert r["latency_only"] and r["default_quality_floor"] is None
    assert all(c["metrics"]["fidelity"] is None for c in r["candidates"] if c["metrics"])
    assert r["measurement"]["shape_source"] == "data"  # the generated inputs
    assert "Latency-only" in r["reason"]


def test_default_plan_leaves_the_slow_recipes_out_unless_thorough(tmp_path):
    from compression.engine.search import plan

    fast = plan.default_plan(str(tmp_path / "cal.npz"), tmp_path)
    names = {spec["name"] for spec in fast}
    assert not names & set(plan.OPT_IN_RECIPES)  # qat, pruning + fine-tune, NNCF
    assert "int8-static[qop,u8,per-tensor]" in names and "mixed-precision" not in names
    prune = next(spec for spec in fast if spec["name"] == "prune-unstructured")
    assert prune["overrides"] == {"finetune_epochs": 0}  # no recovery fine-tune by default
    grid = [spec for spec in fast if spec["recipe"] == "int8-static"]
    caches = {spec["overrides"]["calibration_cache"] for spec in grid}
    assert len(caches) == 1  # one MinMax calibration for every point
    assert not any("entropy" in name for name in names)  # a refinement, not a grid point
    thorough = plan.default_plan(str(tmp_path / "cal.npz"), tmp_path, thorough=True)
    added = {spec["name"] for spec in thorough} - names
    assert added == set(plan.opt_in_available())
    assert "prune-structured+int8-static" in added


def test_neighbours_change_one_knob_and_leave_elementwise_ops_in_float():
    from compression.engine.search import plan

    best = {
        "recipe": "int8-static[qop,u8,per-tensor]",
        "overrides": {
            "quant_format": "qoperator",
            "activation_type": "quint8",
            "per_channel": False,
            "calibration_cache": "/c/calibration-minmax.json",
        },
    }
    specs = plan.neighbours(best, {"Conv", "Add", "Relu", "Gemm", "GlobalAveragePool"})
    by_name = {sp["name"]: sp["overrides"] for sp in specs}
    assert by_name["int8-static[qop,u8,per-tensor,reduce-range]"]["reduce_range"] is True
    assert by_name["int8-static[qop,u8,per-tensor,sym-act]"]["activation_symmetric"] is True
    assert by_name["int8-static[qop,u8,per-tensor,asym-w]"]["weight_symmetric"] is False
    ops = by_name["int8-static[qop,u8,per-tensor,float-Add]"]["op_types"]
    assert "Add" not in ops and "Conv" in ops and "Gemm" in ops
    assert all(o["calibration_cache"] == "/c/calibration-minmax.json" for o in by_name.values())
    assert not any("float-" in n for n in (sp["name"] for sp in plan.neighbours(best, {"Conv"})))


def test_symmetric_activations_reach_the_quantizer(tmp_path, cnn_path, cnn_data):
    import onnx
    from onnx import numpy_helper

    from compression.engine.passes import get_pass

    p = get_pass("int8-static")
    zero_points = {}
    for sym in (False, True):
        out = tmp_path / f"sym{sym}.onnx"
        p.run(
            cnn_path,
            p.make_config(
                {"calibration_path": cnn_data, "per_channel": False, "activation_symmetric": sym}
            ),
            out,
        )
        model = onnx.load(str(out))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        zero_points[sym] = {
            int(inits[n.input[2]])
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[2] in inits
        }
    assert zero_points[True] == {128}  # u8 symmetric: the zero point sits at the centre
    assert zero_points[False] != {128}
