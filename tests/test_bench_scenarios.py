"""`slmops bench MODEL --scenario NAME` on the tiny fp32 model: end to end, no figure compared with a speed.

The serving scenarios run through a real loopback `slmops serve`; the decoding ones in
this process, on tasks cut short to fit the tiny model's 512-token context.
"""

import json

import pytest
from click.testing import CliRunner

from slmops.bench import scenarios
from slmops.bench.commands import bench
from slmops.bench.scenario_run import ScenarioSpec, run_scenarios
from slmops.cli import main


def invoke(*args: str):
    return CliRunner().invoke(bench, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def served(tiny_onnx, tmp_path_factory):
    """One run of the three serving scenarios on the tiny model, written as JSON and PNG."""
    out = tmp_path_factory.mktemp("scenarios")
    result = invoke(
        str(tiny_onnx), "--scenario", "multi-turn", "--scenario", "system-prompt", "--scenario", "burst",
        "--reps", "1", "--threads", "1", "--json", str(out / "run.json"), "--plot", str(out / "run.png"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text()), out, result.output


def test_a_serving_run_writes_the_cpu_the_settings_and_the_figures(served):
    document, out, output = served
    assert document["schema"] == "slmops-bench-scenarios"
    assert document["system"]["cpu_info"]["label"]
    assert document["settings"]["scenarios"] == ["multi-turn", "system-prompt", "burst"]
    assert set(document["load_average"]) == {"before", "after"}
    assert (out / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "multi-turn" in output and "Wrote" in output


def test_the_next_turn_and_later_users_start_from_the_cached_prefix(served):
    figures = served[0]["scenarios"]
    turn = figures["multi-turn"]["figures"]["slmops serve"]
    assert 0 < turn["next turn cached tokens"] < turn["next turn prompt tokens"]
    users = figures["system-prompt"]["figures"]["slmops serve"]
    assert 0 < users["users 2-8 cached tokens"] < users["prompt tokens"]


def test_each_ratio_names_its_figures_and_target(served):
    ratios = {(r["scenario"], r["numerator"], r["denominator"]): r for r in served[0]["ratios"]}
    turn = ratios["multi-turn", "next turn TTFT s", "first turn TTFT s"]
    assert turn["subject"] == "slmops serve" and turn["target"] == 0.15 and turn["better"] == "lower"
    assert 0 < turn["value"] < 20 and turn["met"] in (True, False)
    assert 0 < ratios["system-prompt", "users 2-8 median TTFT s", "user 1 TTFT s"]["value"] < 20
    against_llama = ratios["burst", "median TTFT s", "llama-server: median TTFT s"]
    assert against_llama["value"] is None and against_llama["met"] is None  # no --llama-server in this run


def test_a_burst_times_eight_streams_arriving_together(served):
    burst = served[0]["scenarios"]["burst"]
    assert len(burst["rounds"]["slmops serve"]["TTFT s"]) == scenarios.STREAMS
    figures = burst["figures"]["slmops serve"]
    assert 0 < figures["median TTFT s"] <= figures["p95 TTFT s"]
    assert figures["aggregate tok/s"] > 0


def test_the_decoding_scenarios_compare_speculative_with_plain(tiny_onnx, monkeypatch):
    short = {name: task._replace(prompt=task.prompt[:300]) for name, task in scenarios.TASKS.items()}
    monkeypatch.setattr(scenarios, "TASKS", short)
    spec = ScenarioSpec(str(tiny_onnx), ("grounded", "chat"), rounds=2, threads=1, max_tokens=12)
    document = run_scenarios(spec, callbacks=None)
    assert list(document["scenarios"]) == ["grounded", "chat"]
    grounded = document["scenarios"]["grounded"]["figures"]
    assert set(grounded) == {"copy", "rewrite", "extract", "extract-schema", "code"}
    for figures in grounded.values():
        assert figures["speculative decode tok/s"] > 0 and figures["plain decode tok/s"] > 0
        assert figures["accepted tokens"] <= figures["drafted tokens"]
        # fp32: speculation keeps greedy output token for token
        assert figures["same leading tokens"] == figures["completion tokens"]
    targets = {r["subject"]: r["target"] for r in document["ratios"]}
    assert targets["copy"] == 1.8 and targets["chat-story"] == 0.97
    assert len(document["scenarios"]["chat"]["rounds"]["chat-story"]["plain"]) == 2


def test_an_unknown_scenario_is_a_one_line_error(tiny_onnx, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", str(tiny_onnx), "--scenario", "multi-turn", "--scenario", "marathon"])
    assert exit_.value.code != 0
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "marathon" in error and "multi-turn" in error


def test_llama_server_without_a_gguf_or_without_a_scenario_is_refused(tiny_onnx, tmp_path, capsys):
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    for args in (["--scenario", "burst", "--llama-server", str(binary)], ["--llama-server", str(binary)]):
        with pytest.raises(SystemExit):
            main(["bench", str(tiny_onnx), *args])
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and "--llama-server" in error


@pytest.mark.slow
def test_smollm2_reuses_the_conversation_and_drafts_from_the_passage(smollm2_int4):
    spec = ScenarioSpec(str(smollm2_int4), ("multi-turn", "grounded"), rounds=1, threads=2, max_tokens=48)
    document = run_scenarios(spec)
    turn = document["scenarios"]["multi-turn"]["figures"]["slmops serve"]
    assert 800 <= turn["next turn prompt tokens"] <= 1400  # sized in SmolLM2's tokens: ~1,000 and a turn
    assert turn["next turn cached tokens"] >= 0.8 * turn["next turn prompt tokens"]
    copy = document["scenarios"]["grounded"]["figures"]["copy"]
    assert copy["accepted tokens"] > 0 and copy["completion tokens"] == 48


def test_shuffled_rounds_run_every_task_in_every_mode_once_a_round_in_a_reproducible_order():
    from slmops.bench.scenario_decode import shuffled_rounds

    tasks, modes = ["copy", "code", "chat"], ("speculative", "plain")
    steps = list(shuffled_rounds(tasks, modes, 3))
    orders = [[(task, mode) for n, task, mode in steps if n == number] for number in (1, 2, 3)]
    assert all(sorted(order) == sorted((task, mode) for task in tasks for mode in modes) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # drawn again each round
    assert steps == list(shuffled_rounds(tasks, modes, 3))
