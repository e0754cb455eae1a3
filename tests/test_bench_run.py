"""The sweep, the JSON schema, the reports and `bench compare`, on fake targets with a fake clock."""

import copy
import importlib
import json
import struct
import zlib

import pytest
from click.testing import CliRunner

from slmops.bench import report, schema
from slmops.bench.commands import bench
from slmops.bench.compare import compare, load_result
from slmops.bench.prompts import PromptSource, load_paragraphs, shipped_paragraphs
from slmops.bench.runner import Sweep, run_benchmark
from slmops.bench.stats import RequestRecord
from slmops.bench.targets import Target
from slmops.cli import main
from slmops.errors import ModelNotFound, UsageError
from slmops.machine import CpuInfo

SYSTEM = {
    "cpu": "Test CPU",
    "physical_cores": 2,
    "logical_cpus": 2,
    "usable_cpus": 2,
    "ram_gb": 8.0,
    "os": "Linux",
    "python": "3.11",
    "libraries": {"slmops": "0.1.0"},
}


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


class FakeTarget(Target):
    """Words are tokens; prefill costs ``prefill_s`` per token and decode ``decode_s`` per token."""

    def __init__(self, label, clock, prefill_s=0.0005, decode_s=0.01, context_length=4096):
        self.label, self.clock, self.kind = label, clock, "raw"
        self.prefill_s, self.decode_s = prefill_s, decode_s
        self.context_length = context_length
        self.weight_bytes = 100 * 10**6
        self.threads = 2
        self.seen: list[int] = []

    def encode(self, text):
        return list(range(len(text.split())))

    def decode(self, ids):
        return " ".join("w" for _ in ids)

    def request(self, prompt, max_tokens, clock):
        ids = self.encode(prompt.text)[: prompt.tokens]
        self.seen.append(len(ids))
        r = RequestRecord(start=clock(), prompt_tokens=len(ids))
        self.clock.now += self.prefill_s * len(ids)
        for _ in range(max_tokens):
            self.clock.now += self.decode_s
            r.add_chunk(clock())
        r.finish(clock())
        return r


def fake_run(decode_b=0.02, reps=3, prompt_lengths=(16, 64)):
    clock = Clock()
    a, b = FakeTarget("fast", clock), FakeTarget("slow", clock, decode_s=decode_b)
    source = PromptSource(shipped_paragraphs(), a.encode, a.decode)
    sweep = Sweep(prompt_lengths=prompt_lengths, output_lengths=(8,), reps=reps, warmup=1)
    result = run_benchmark([a, b], sweep, source, SYSTEM, bandwidth_gb_s=10.0, clock=clock)
    return result, a, b


def test_sweep_measures_exact_prompts_and_ratios():
    result, a, b = fake_run()
    document = result.to_dict()  # validates against the schema
    assert [c["target"] for c in document["cases"]] == ["fast", "slow", "fast", "slow"]
    assert a.seen == [32, 16, 16, 16, 64, 64, 64]  # warm-up, then exactly the asked lengths
    first = document["cases"][0]["stats"]
    assert first["requests"] == 3 and first["prompt_tokens"] == 16
    assert first["ttft_ms"]["median"] == pytest.approx(16 * 0.5 + 10)
    assert first["tpot_ms"]["median"] == pytest.approx(10)
    assert first["decode_tps"]["median"] == pytest.approx(100)
    # roofline: 10 GB/s over 100 MB of weights = 100 tok/s, and "fast" decodes at 100 tok/s
    assert document["targets"][0]["roofline_tps"] == pytest.approx(100)
    assert document["cases"][0]["roofline_pct"] == pytest.approx(100)
    ratio = document["ratios"][0]
    assert (ratio["target"], ratio["reference"]) == ("fast", "slow")
    assert ratio["decode_speedup"] == pytest.approx(2.0)
    assert ratio["ttft_speedup"] == pytest.approx((16 * 0.5 + 20) / (16 * 0.5 + 10))


def test_prompt_lengths_are_clipped_to_the_context():
    clock = Clock()
    target = FakeTarget("small", clock, context_length=100)
    source = PromptSource(shipped_paragraphs(), target.encode, target.decode)
    sweep = Sweep(prompt_lengths=(16, 64, 512), output_lengths=(8,), reps=1, warmup=0)
    result = run_benchmark([target], sweep, source, SYSTEM, clock=clock)
    # 512 does not fit beside 8 new tokens in 100: it is measured at the longest prompt that does
    assert result.settings["prompt_lengths"] == [16, 64, 92]
    assert max(case.prompt_tokens for case in result.cases) == 92
    with pytest.raises(UsageError, match="output-lengths"):
        run_benchmark(
            [target], Sweep(prompt_lengths=(512,), output_lengths=(100,), reps=1), source, SYSTEM, clock=clock
        )


def test_user_prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "one two three"}\n\n{"text": "four five"}\n')
    assert load_paragraphs(path) == ["one two three", "four five"]
    path.write_text("not json\n")
    with pytest.raises(UsageError, match="prompts.jsonl:1"):
        load_paragraphs(path)


def test_schema_rejects_a_broken_document():
    document = fake_run(reps=1, prompt_lengths=(16,))[0].to_dict()
    broken = copy.deepcopy(document)
    del broken["cases"][0]["stats"]["ttft_ms"]
    with pytest.raises(UsageError, match="cases/0/stats"):
        schema.validate(broken)
    broken = copy.deepcopy(document)
    broken["schema_version"] = 99
    with pytest.raises(UsageError):
        schema.validate(broken)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    crc = struct.unpack(">I", data[16 + length : 20 + length])[0]
    assert crc == zlib.crc32(data[12 : 16 + length])
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_markdown_and_plot(tmp_path):
    document = fake_run()[0].to_dict()
    text = report.markdown(document, "Fake run")
    assert text.startswith("# Fake run")
    assert "| fast | 16 | 8 | 1 |" in text and "## Ratios" in text and "| fast | slow | 16 |" in text
    width, height = _png_size(report.plot(document, tmp_path / "chart.png"))
    assert width > 1000 and height > 400


ZEN4 = CpuInfo(
    "AMD EPYC 9R14 96-Core Processor",
    "AMD",
    "x86_64",
    ("avx2", "fma", "avx512f", "avx512_vnni"),
    "AVX-512 VNNI",
    "Zen 4",
    "AMD EPYC (Zen 4 class), AVX-512 VNNI",
)


def test_a_result_names_its_cpu_in_json_markdown_and_chart(tmp_path, monkeypatch):
    result, _, _ = fake_run(reps=1, prompt_lengths=(16,))
    result.system = {**SYSTEM, "cpu_info": ZEN4.to_json()}
    document = json.loads(json.dumps(result.to_dict()))  # as written and read back
    assert document["system"]["cpu"] == "Test CPU"  # the model name stays where it was
    assert document["system"]["cpu_info"]["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni"]
    text = report.markdown(document)
    assert "- CPU: AMD EPYC (Zen 4 class), AVX-512 VNNI (AMD EPYC 9R14 96-Core Processor; flags: avx2 fma" in text
    titles = []
    monkeypatch.setattr("matplotlib.figure.Figure.suptitle", lambda self, title, **kw: titles.append(title))
    report.plot(document, tmp_path / "chart.png")
    assert titles and "AMD EPYC (Zen 4 class), AVX-512 VNNI" in titles[0]
    broken = copy.deepcopy(document)
    broken["system"]["cpu_info"]["flags"] = "avx2"
    with pytest.raises(UsageError, match="system/cpu_info/flags"):
        schema.validate(broken)


def test_a_result_from_before_the_cpu_flags_still_reads_and_compares_by_model(tmp_path):
    old = fake_run(reps=1, prompt_lengths=(16,))[0].to_dict()
    assert "cpu_info" not in old["system"]
    schema.validate(old)
    assert "- CPU: Test CPU (flags not recorded)" in report.markdown(old)
    new = copy.deepcopy(old)
    new["system"]["cpu_info"] = ZEN4.to_json()
    assert compare(old, new).cpus is None  # same model name: nothing says they differ
    other = copy.deepcopy(new)
    other["system"]["cpu_info"] = {**ZEN4.to_json(), "flags": ["avx2", "fma"], "label": "AMD EPYC (Zen 3 class), AVX2"}
    assert compare(new, other).cpus == (report.cpu_text(new["system"]), report.cpu_text(other["system"]))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(new))
    b.write_text(json.dumps(other))
    printed = CliRunner().invoke(bench, ["compare", str(a), str(b)])
    assert printed.exit_code == 0 and "different CPUs:" in printed.output
    assert "AMD EPYC (Zen 3 class), AVX2" in printed.output


def test_compare_flags_regressions_and_exits_nonzero(tmp_path):
    base = fake_run(reps=2)[0].to_dict()
    worse = copy.deepcopy(base)
    for case in worse["cases"]:
        if case["target"] == "fast":
            case["stats"]["decode_tps"]["median"] *= 0.8
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base))
    b.write_text(json.dumps(worse))
    comparison = compare(load_result(a), load_result(b), threshold=0.10)
    assert {(c.case.split()[0], c.figure) for c in comparison.regressions} == {("fast", "decode tok/s")}
    assert all(c.ratio == pytest.approx(0.8) for c in comparison.regressions)

    runner = CliRunner()
    same = runner.invoke(bench, ["compare", str(a), str(a), "--fail-on-regression"])
    assert same.exit_code == 0, same.output
    flagged = runner.invoke(bench, ["compare", str(a), str(b), "--fail-on-regression"])
    assert flagged.exit_code == 1 and "REGRESSION" in flagged.output
    regressed = [line for line in flagged.output.splitlines() if "REGRESSION" in line]
    assert len(regressed) == len(comparison.regressions)  # one line a row, even when rich would wrap it
    assert all(line.startswith("fast p=") and "decode tok/s" in line for line in regressed)
    assert "regressed beyond 10%" in str(flagged.exception)
    lenient = runner.invoke(bench, ["compare", str(a), str(b), "--threshold", "25", "--fail-on-regression"])
    assert lenient.exit_code == 0
    with pytest.raises(SystemExit) as exited:  # through the real entry point too
        main(["bench", "compare", str(a), str(b), "--fail-on-regression"])
    assert exited.value.code == 1
    (tmp_path / "bad.json").write_text('{"schema": "other"}')
    bad = runner.invoke(bench, ["compare", str(a), str(tmp_path / "bad.json")])
    assert bad.exit_code != 0 and isinstance(bad.exception, UsageError)


def test_bench_group_takes_a_model_or_a_subcommand():
    runner = CliRunner()
    top = runner.invoke(bench, ["--help"])
    assert top.exit_code == 0 and "compare" in top.output and "slmops bench MODEL" in top.output
    missing = runner.invoke(bench, ["/no/such/model", "--no-roofline", "--reps", "1"])
    assert isinstance(missing.exception, ModelNotFound)
    none = runner.invoke(bench, ["--prompt-lengths", "16"])
    assert isinstance(none.exception, UsageError) and "MODEL" in str(none.exception)
    bad = runner.invoke(bench, ["m", "--prompt-lengths", "16,x"])
    assert isinstance(bad.exception, UsageError) and "--prompt-lengths" in str(bad.exception)


def test_bandwidth_is_cached_and_a_refresh_keeps_the_best_measurement(tmp_path, monkeypatch):
    from slmops.bench import system

    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path))
    probes = iter([4.0, 20.0, 9.0, 7.0])
    monkeypatch.setattr(system, "probe_bandwidth", lambda size_mb: next(probes))
    assert system.memory_bandwidth() == 4.0
    assert system.memory_bandwidth() == 4.0  # cached: no probe
    assert system.memory_bandwidth(refresh=True) == 20.0
    # a slower copy means a busier machine, not a slower memory
    assert system.memory_bandwidth(refresh=True) == 20.0
    assert system.memory_bandwidth() == 20.0
    (tmp_path / "bench" / "bandwidth.json").write_text("{broken")
    assert system.memory_bandwidth() == 7.0


def test_a_decode_above_the_roofline_measures_the_bandwidth_again(monkeypatch):
    module = importlib.import_module("slmops.bench.benchmark")  # the package exports a function of that name

    # 5 GB/s over 100 MB of weights: a roofline of 50 tok/s, and "fast" decodes at 100
    result, _, _ = fake_run()
    module.set_bandwidth(result, 5.0)
    assert [case.target for case in module.above_roofline(result)] == ["fast", "fast"]
    refreshes = []

    def bandwidth(refresh=False):
        refreshes.append(refresh)
        return 20.0 if refresh else 5.0

    class Spec:
        def build(self):
            return []

    monkeypatch.setattr(module, "memory_bandwidth", bandwidth)
    monkeypatch.setattr(module, "run_benchmark", lambda *args: result)
    document = module.benchmark(Spec(), Sweep()).to_dict()
    assert refreshes == [False, True]
    assert document["memory_bandwidth_gb_s"] == 20.0
    assert document["targets"][0]["roofline_tps"] == pytest.approx(200)
    assert document["cases"][0]["roofline_pct"] == pytest.approx(50)
    assert not any("roofline" in warning for warning in document["warnings"])

    # a refresh that does not help leaves a warning naming the fix
    monkeypatch.setattr(module, "memory_bandwidth", lambda refresh=False: 5.0)
    module.set_bandwidth(result, 5.0)
    document = module.benchmark(Spec(), Sweep()).to_dict()
    assert any("--refresh-bandwidth" in warning and "200%" in warning for warning in document["warnings"])
