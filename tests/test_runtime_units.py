"""Runtime pieces that need no model: thread detection, options, stop strings, prompts."""

from pathlib import Path

import pytest

from slmops.errors import UsageError
from slmops.modelfolder.inference_model import InferenceModel
from slmops.modelfolder.messages import normalize
from slmops.runtime import threads
from slmops.runtime.generate import StopText
from slmops.runtime.options import GenerationOptions, model_defaults
from slmops.runtime.prompt import end_marker

# ---- threads ------------------------------------------------------------------


def fake_cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    proc = tmp_path / "cgroup"
    proc.write_text(membership)
    root = tmp_path / "sys-fs-cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    return proc, root


@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_v2_quota_caps_affinity(tmp_path, four_cpus):
    proc, root = fake_cgroups(tmp_path, "0::/app.slice/job\n", {"app.slice/job/cpu.max": "200000 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 2.0
    assert threads.default_threads(proc, root) == 2


def test_v2_unlimited_uses_affinity(tmp_path, four_cpus):
    proc, root = fake_cgroups(tmp_path, "0::/\n", {"cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) is None
    assert threads.default_threads(proc, root) == 4


def test_v2_parent_quota_wins_and_fractions_round_up(tmp_path, four_cpus):
    proc, root = fake_cgroups(tmp_path, "0::/a/b\n", {"a/cpu.max": "150000 100000", "a/b/cpu.max": "max 100000"})
    assert threads.cgroup_cpu_quota(proc, root) == 1.5
    assert threads.default_threads(proc, root) == 2


def test_v2_container_path_missing_reads_mount_root(tmp_path, four_cpus):
    # Inside a container the host path in /proc/self/cgroup does not exist under the mount.
    proc, root = fake_cgroups(tmp_path, "0::/docker/abc123\n", {"cpu.max": "100000 100000"})
    assert threads.default_threads(proc, root) == 1


def test_v1_quota(tmp_path, four_cpus):
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    proc, root = fake_cgroups(tmp_path, "4:memory:/x\n2:cpu,cpuacct:/\n", files)
    assert threads.cgroup_cpu_quota(proc, root) == 3.0
    assert threads.default_threads(proc, root) == 3


def test_v1_unlimited_and_missing_files(tmp_path, four_cpus):
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    proc, root = fake_cgroups(tmp_path, "1:cpu:/\n", files)
    assert threads.default_threads(proc, root) == 4
    assert threads.default_threads(tmp_path / "no-such-file", root) == 4


def test_affinity_limits_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    proc, root = fake_cgroups(tmp_path, "0::/\n", {"cpu.max": "400000 100000"})
    assert threads.default_threads(proc, root) == 1


def test_garbage_cgroup_files_are_ignored(tmp_path, four_cpus):
    proc, root = fake_cgroups(tmp_path, "garbage\n0::/\n", {"cpu.max": "lots 0"})
    assert threads.default_threads(proc, root) == 4


# ---- options ------------------------------------------------------------------


def test_precedence_defaults_genai_modelconfig_call():
    search = {"do_sample": True, "temperature": 0.9, "top_p": 0.8, "top_k": 40, "repetition_penalty": 1.0}
    defaults = model_defaults(search, {"temperature": 0.7, "repetition_penalty": 1.1, "max_length": 2048})
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.repetition_penalty) == (0.7, 0.8, 40, 1.1)
    call = defaults.replace(temperature=0.2, top_k=None, seed=5)
    assert (call.temperature, call.top_k, call.seed, call.top_p) == (0.2, 40, 5, 0.8)
    assert defaults.temperature == 0.7  # the model's defaults are not changed by a call


def test_greedy_genai_config_means_temperature_zero():
    assert model_defaults({"do_sample": False, "temperature": 1.0, "top_k": 50}, None).temperature == 0.0
    assert model_defaults({}, None) == GenerationOptions()


def test_search_options_fit_the_context():
    options = GenerationOptions(max_tokens=100, temperature=0.5, seed=3)
    search = options.search_options(prompt_tokens=30, context_length=2048)
    assert search["max_length"] == 130 and search["do_sample"] and search["random_seed"] == 3
    assert GenerationOptions(max_tokens=5000).search_options(30, 2048)["max_length"] == 2048
    assert GenerationOptions().search_options(30, 2048)["max_length"] == 2048
    assert GenerationOptions().search_options(30, 2048)["do_sample"] is False


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"top_k": -1},
        {"repetition_penalty": 0},
        {"seed": -2},
        {"colour": "red"},
    ],
)
def test_invalid_options_are_usage_errors(bad):
    with pytest.raises(UsageError):
        GenerationOptions().replace(**bad)


def test_stop_accepts_one_string_or_many():
    assert GenerationOptions().replace(stop="END").stop == ("END",)
    assert GenerationOptions().replace(stop=["a", "", "b"]).stop == ("a", "b")


# ---- stop strings -------------------------------------------------------------


def feed_all(stopper: StopText, pieces: list[str]) -> tuple[str, bool]:
    shown = []
    for piece in pieces:
        text, stopped = stopper.feed(piece)
        shown.append(text)
        if stopped:
            return "".join(shown), True
    return "".join(shown) + stopper.flush(), False


def test_stop_string_split_across_tokens_is_cut():
    assert feed_all(StopText(["###"]), ["Hello", " #", "#", "# more"]) == ("Hello ", True)


def test_near_miss_is_released():
    assert feed_all(StopText(["###"]), ["a #", "# b", " c"]) == ("a ## b c", False)


def test_earliest_of_several_stops_wins():
    assert feed_all(StopText(["END", "\n\n"]), ["one\n", "\ntwo END"]) == ("one", True)


def test_no_stops_passes_through():
    assert StopText([]).feed("anything") == ("anything", False)


# ---- prompts ------------------------------------------------------------------


def test_normalize_accepts_objects_and_content_parts():
    class Message:
        role, content = "user", [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]

    assert normalize([Message(), {"role": "assistant", "content": None}]) == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize("bad", ["just text", [], [{"role": "wizard", "content": "x"}]])
def test_normalize_refuses_bad_messages(bad):
    with pytest.raises(UsageError):
        normalize(bad)


def test_end_marker_comes_from_the_assistant_template():
    chatml = InferenceModel(
        Name="m",
        PromptTemplate={
            "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
            "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant",
        },
    )
    gemma = InferenceModel(
        Name="g",
        PromptTemplate={
            "assistant": "<start_of_turn>model\n{Content}<end_of_turn>\n",
            "prompt": "<start_of_turn>user\n{Content}<end_of_turn>\n",
        },
    )
    assert end_marker(chatml) == "<|im_end|>"
    assert end_marker(gemma) == "<end_of_turn>"
    assert end_marker(InferenceModel(Name="bare")) is None
    assert end_marker(None) is None
