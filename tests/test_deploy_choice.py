"""`deploy` picks its export by speed measured on this CPU: the rule, the kept figures, INT8 when it dominates."""

from __future__ import annotations

import json

import pytest

from slmops.cache import store
from slmops.convert import layouts
from slmops.deploy import choice
from slmops.deploy import pipeline as deploys
from slmops.deploy.choice import INT8, Measured, int8_verdict, pick

PASSING_SUITE = '{"name": "answers", "prompt": "hello", "not_contains": "zzzz-never-said"}\n'


def row(name, speed, delta, size, precision="int4"):
    return Measured(name, precision, size_mb=size, delta_ppl_pct=delta, same_top_pct=90.0, decode_tokens_per_s=speed)


def test_the_fastest_within_the_budget_wins():
    rows = [row("fast-far", 200, 40.0, 80), row("fast", 150, 10.0, 100), row("close", 100, 2.0, 200)]
    best, reason = pick(rows, max_ppl_increase=25)
    assert best.candidate == "fast" and "the fastest within ΔPPL ≤ 25%" in reason
    assert pick(rows, max_ppl_increase=5)[0].candidate == "close"
    assert pick(rows, max_ppl_increase=None)[0].candidate == "fast-far"


def test_speeds_within_five_percent_tie_and_the_smallest_wins():
    best, reason = pick([row("big", 100, 1.0, 200), row("small", 96, 3.0, 90)], max_ppl_increase=5)
    assert best.candidate == "small" and "the smallest of 2 within 5% of the fastest" in reason


def test_nothing_within_the_budget_names_the_closest():
    best, reason = pick([row("a", 100, 30.0, 90), row("b", 90, 12.0, 100)], max_ppl_increase=5)
    assert best is None and "no candidate is within ΔPPL ≤ 5%" in reason and "b: 90 tokens/s" in reason


def test_int8_dominates_only_when_faster_and_closer_than_every_int4():
    int8 = row(INT8, 140, 0.5, 157, precision="int8")
    assert "INT8 dominates every INT4 candidate" in int8_verdict([int8, row("a", 120, 5.0, 100), row("b", 130, 20, 90)])
    assert int8_verdict([int8, row("a", 150, 20.0, 90)]) is None
    assert int8_verdict([row("a", 150, 20.0, 90)]) is None


def test_a_quantized_gguf_adds_its_exact_blocks_as_a_candidate(tiny_model_factory, tmp_path):
    from slmops.convert.sources import inspect_source
    from tests.test_convert_inputs import write_gguf

    hf = tiny_model_factory("llama", tie=True)
    q4 = write_gguf(hf, tmp_path / "q4.gguf", kind={"blk.0.ffn_down.weight": "Q4_0"})
    f32 = write_gguf(hf, tmp_path / "f32.gguf")
    steps = choice.CALIBRATED_STEPS[64]
    assert choice.default_candidates(inspect_source(q4), steps) == (steps[0], choice.GGUF_EXACT, INT8)
    assert choice.default_candidates(inspect_source(f32), steps) == (steps[0], INT8)
    assert choice.default_candidates(inspect_source(hf), steps) == (steps[0], INT8)
    assert "gguf_blocks=exact" in choice.how(choice.GGUF_EXACT)


# kernel times (ms a token) as an AVX2 Zen 3 class CPU measured them, and with blocks of 32 as slow as a Zen 4's
AS_FAST = {"4-32": [6.86, 6.9], "4-64": [6.48, 6.5], "8-64": [10.56, 10.6]}
SLOWER = {"4-32": [12.0, 12.1], "4-64": [6.5, 6.6], "8-64": [10.5, 10.4]}


def keep_kernel_times(source, times) -> None:
    from slmops.convert.sources import inspect_source, source_hash

    book = choice.MeasurementBook()
    book.put_kernel_times(choice.machine_key(), source_hash(inspect_source(source)), times)
    book.save()


@pytest.mark.parametrize("block, times", [(64, SLOWER), (32, AS_FAST)])
def test_a_calibrated_export_over_the_budget_is_made_again_with_more_8bit_weights(
    tiny_llama, tmp_path, monkeypatch, block, times
):
    first, half, three_quarters = choice.CALIBRATED_STEPS[block]
    figures = {first: (150, 12.0), INT8: (100, 0.1), half: (130, 9.0), three_quarters: (120, 6.0)}  # speed, ΔPPL
    keep_kernel_times(tiny_llama, times)  # the layout this CPU's kernels chose
    built: list[str] = []
    monkeypatch.setattr(choice, "_build", lambda candidate, *args: built.append(candidate) or tmp_path / candidate)
    monkeypatch.setattr(choice, "reference_export", lambda source, reference: reference)
    timed: list[list[str]] = []

    def scored(folders, reference, windows):
        rows = {
            name: row(name, 0, figures[name][1], 100, precision=INT8 if name == INT8 else "int4") for name in folders
        }
        for name, measured in rows.items():
            measured.how, measured.windows = choice.how(name), windows  # as the book keys its figures
        return rows

    def measure_speeds(folders, rounds=2):
        timed.append(sorted(folders))
        return {name: [float(figures[name][0])] * rounds for name in folders}

    monkeypatch.setattr(choice, "_scored", scored)
    monkeypatch.setattr(choice, "measure_speeds", measure_speeds)

    def choose(budget):
        built.clear()
        return choice.choose(
            tiny_llama, tmp_path, tmp_path / "ref", name="t", any_precision=False, max_ppl_increase=budget, windows=1
        )[0]

    made = choose(10)
    assert made.pick == half and made.layout.startswith(f"4-bit blocks of {block} ")
    assert built == [first, INT8, half]  # the 75% step was not needed
    assert timed == [sorted([first, INT8]), sorted([first, INT8, half])]  # the step timed beside the others
    timed.clear()
    over = choose(5)  # every step over the budget: the last is built, and none is picked
    # INT8, measured by the first deploy and quick to convert again, is timed beside it; the calibrated steps,
    # neither in the cache nor quick to build, keep the speeds of their own run
    assert over.pick is None and built == [three_quarters, INT8] and timed == [sorted([three_quarters, INT8])]
    assert over.reason.startswith(f"no candidate is within ΔPPL ≤ 5%; the closest is {three_quarters}")
    assert choose(15).pick == first and built == []


def test_the_layout_is_timed_on_the_models_layer_shapes_once_per_machine(tiny_llama, tmp_path, monkeypatch):
    timed: list[list[tuple[int, int]]] = []
    monkeypatch.setattr(layouts, "time_kernels", lambda shapes, threads: timed.append(shapes) or dict(AS_FAST))
    reference = tmp_path / "ref"

    def steps():
        return choice.calibrated_steps(choice.MeasurementBook(), "cpu", "model", tiny_llama, reference, print)

    first, why = steps()
    assert first == choice.CALIBRATED_STEPS[32] and why.endswith(
        "(the median of 2 interleaved rounds), within 5%, so the closer layout"
    )
    assert timed == [layouts.layer_shapes(reference)]  # the FP32 export made for the timing, the head left out
    assert steps() == (first, why) and len(timed) == 1, "kept in the book: not timed again"
    keep = choice.MeasurementBook()
    keep.put_kernel_times("cpu", "model", SLOWER)
    keep.save()
    assert steps()[0] == choice.CALIBRATED_STEPS[64]


@pytest.mark.parametrize("layout", [layouts.COARSE, layouts.FINE])
def test_each_layouts_steps_build_it(layout):
    from slmops.convert.variants import INT4_VARIANTS
    from slmops.convert.weight_only import calibrated_options

    first, *more = (
        calibrated_options(INT4_VARIANTS[name].options()) for name in choice.CALIBRATED_STEPS[layout.block_size]
    )
    assert (first.block_size, first.int8_share) == (layout.block_size, layout.int8_share)
    assert [(options.block_size, options.int8_share) for options in more] == [
        (layout.block_size, 0.5),
        (layout.block_size, 0.75),
    ]


@pytest.fixture
def fake_speeds(monkeypatch):
    """Decode speeds by candidate, so the test never depends on this CPU; records what was measured."""
    measured: list[list[str]] = []
    speeds = {"int4-k_quant_mixed-b128": 200.0, "int4": 150.0, INT8: 250.0}

    def measure_speeds(folders, rounds=2):
        measured.append(sorted(folders))
        return {name: [speeds[name]] * rounds for name in folders}

    monkeypatch.setattr(choice, "measure_speeds", measure_speeds)
    monkeypatch.setattr(choice, "calibrated_steps", lambda *args: (("int4-k_quant_mixed-b128",), ""))
    monkeypatch.setattr(choice, "default_candidates", lambda info, steps: (*steps, "int4", INT8))
    return measured


def _deploy(tiny_llama, tmp_path, name, **options):
    suite = tmp_path / "suite.jsonl"
    suite.write_text(PASSING_SUITE, encoding="utf-8")
    lines: list[str] = []
    result = deploys.deploy(tiny_llama, name=name, windows=1, soak=10, suite=suite, echo=lines.append, **options)
    return result, "\n".join(lines)


def test_deploy_measures_once_per_machine_and_picks_by_the_rule(tiny_llama, tmp_path, fake_speeds):
    first, shown = _deploy(tiny_llama, tmp_path, "tiny-chosen", max_ppl_increase=None)
    assert first.variant == "int4-k_quant_mixed-b128"  # the fastest INT4; INT8 is faster but not an INT4
    # minutes of building on a small CPU: each export says when it starts and ends
    assert "    int4: building\n    int4: built in " in shown and "    scoring 3 against the FP32 export" in shown
    book = json.loads((deploys.settings.home() / choice.BOOK).read_text())
    [machine] = book
    assert machine == choice.machine_key()
    [model] = book[machine].values()
    assert set(model) == {"int4-k_quant_mixed-b128", "int4", INT8}
    report = json.loads((store.find("tiny-chosen").path / "deploy-report.json").read_text())
    assert report["choice"]["pick"] == "int4-k_quant_mixed-b128" and "delta_ppl_pct" in report["quality"]["figures"]
    picked = model["int4-k_quant_mixed-b128"]
    # the pick was scored while choosing, on the same windows: its eval reads that report
    assert report["steps"][2]["summary"].endswith(", scored while choosing")
    assert round(report["quality"]["figures"]["delta_ppl_pct"], 2) == picked["delta_ppl_pct"]

    second, shown = _deploy(tiny_llama, tmp_path, "tiny-chosen-again", max_ppl_increase=None)
    assert fake_speeds == [["int4", "int4-k_quant_mixed-b128", INT8]], "the second deploy measured nothing"
    assert second.variant == first.variant and "measured by an earlier deploy" in shown
    again = json.loads((store.find("tiny-chosen-again").path / "deploy-report.json").read_text())
    # copied from the first deploy's export, built from the same source the same way on this CPU, with its scores
    assert again["steps"][1]["summary"].startswith("the export of tiny-chosen in the cache")
    assert again["steps"][2]["summary"].endswith(", scored when tiny-chosen was deployed")
    assert again["quality"]["figures"] == report["quality"]["figures"] and again["build"] == report["build"]


def test_measuring_again_copies_the_candidates_the_cache_holds(tiny_llama, tmp_path, fake_speeds, monkeypatch):
    from slmops.convert import variants

    first, _ = _deploy(tiny_llama, tmp_path, "tiny-first", max_ppl_increase=None)
    (deploys.settings.home() / choice.BOOK).unlink()  # measure again, say on an idle machine
    built: list[str] = []
    build = variants.build
    monkeypatch.setattr(
        variants, "build", lambda variant, *args, **kw: built.append(variant.name) or build(variant, *args, **kw)
    )
    again, _ = _deploy(tiny_llama, tmp_path, "tiny-measured-again", max_ppl_increase=None)
    assert fake_speeds[-1] == ["int4", "int4-k_quant_mixed-b128", INT8], "every candidate timed again"
    assert built == ["int4", INT8], "the pick was copied from the cache, the others built"
    assert again.variant == first.variant and again.build == first.build


def test_a_new_candidate_is_timed_beside_the_kept_ones_built_again(tiny_llama, tmp_path, fake_speeds, monkeypatch):
    from slmops.convert import variants

    _deploy(tiny_llama, tmp_path, "tiny-kept", max_ppl_increase=None)
    path = deploys.settings.home() / choice.BOOK
    book = json.loads(path.read_text())
    [model] = book[choice.machine_key()].values()
    model["int4"]["how"] = "int4 (an earlier builder)"  # its figures no longer hold: measured again
    path.write_text(json.dumps(book))
    built: list[str] = []
    build = variants.build
    monkeypatch.setattr(
        variants, "build", lambda variant, *args, **kw: built.append(variant.name) or build(variant, *args, **kw)
    )
    again, shown = _deploy(tiny_llama, tmp_path, "tiny-kept-again", max_ppl_increase=None)
    # a host's speed moves between runs: the kept candidates are had again (the pick copied from the cache,
    # INT8 converted) and timed in the same rounds as the new one
    assert "int4-k_quant_mixed-b128, int8: measured before; built again to be timed beside the new" in shown
    assert built == ["int4", INT8] and fake_speeds[-1] == ["int4", "int4-k_quant_mixed-b128", INT8]
    assert again.variant == "int4-k_quant_mixed-b128"


def test_auto_picks_int8_when_it_dominates_and_says_so(tiny_llama, tmp_path, fake_speeds, monkeypatch):
    rows = {
        "int4-k_quant_mixed-b128": row("int4-k_quant_mixed-b128", 200, 20.0, 90),
        "int4": row("int4", 150, 30.0, 80),
        INT8: row(INT8, 250, 0.5, 157, precision="int8"),
    }
    monkeypatch.setattr(choice, "_scored", lambda folders, reference, windows: {n: rows[n] for n in folders})
    result, shown = _deploy(tiny_llama, tmp_path, "tiny-auto", precision="auto", max_ppl_increase=None)
    assert result.precision == "int8" and result.variant == "int8"
    assert (
        "INT8 dominates every INT4 candidate within the quality budget on this CPU: int8: 250 tokens/s, ΔPPL +0.5%"
        in shown
    )


def test_a_figure_measured_on_another_quantizer_or_timed_or_scored_otherwise_is_measured_again(tmp_path):
    made = row("int4-calibrated-b64", 150, 4.0, 110)
    made.how, made.timing, made.windows = choice.how("int4-calibrated-b64"), choice.TIMING, 8
    assert "rotated" in made.how and "gptq" in made.how  # the quantizer's own settings, not only the variant's
    book = choice.MeasurementBook(tmp_path / "book.json")
    book.put("cpu", "model", made)
    book.save()
    kept = choice.MeasurementBook(tmp_path / "book.json")
    assert kept.get("cpu", "model", "int4-calibrated-b64", made.how, 8) == made
    assert kept.get("cpu", "model", "int4-calibrated-b64", "int4 (an earlier calibrated quantizer)", 8) is None
    assert kept.get("cpu", "model", "int4-calibrated-b64", made.how, 4) is None  # its ΔPPL was on 8 windows
    made.timing = ""  # timed before deploy turned prompt lookup off: a looping answer drafted itself
    book.put("cpu", "model", made)
    assert book.get("cpu", "model", "int4-calibrated-b64", made.how, 8) is None


def test_candidates_are_scored_against_fp32_log_probs_computed_once(tiny_llama, tmp_path, monkeypatch):
    from slmops.convert import convert
    from slmops.evaluate import quality

    reference = tmp_path / "work" / deploys.REFERENCE
    convert(tiny_llama, reference, precision="fp32", name="reference", log_level=0)
    int8 = tmp_path / "int8"
    convert(tiny_llama, int8, precision="int8", name="int8", log_level=0)
    scored = quality.evaluate_quality
    runs: list[str] = []
    monkeypatch.setattr(quality, "evaluate_quality", lambda model, **kw: runs.append(model.name) or scored(model, **kw))
    rows = choice._scored({"a": int8, "b": int8}, reference, windows=2)
    assert runs == [deploys.REFERENCE, "int8", "int8"], "the FP32 graph ran once for both candidates"
    direct = scored(int8, reference=reference, windows=2).figures
    assert rows["a"].windows == 2 and rows["a"].same_top_pct == pytest.approx(direct.same_top_pct, abs=0.01)
    assert rows["a"].delta_ppl_pct == pytest.approx(direct.delta_ppl_pct, abs=0.05)  # saved as float16
