"""benchmarks/bench_results.py keeps one section of RESULTS.md per CPU: a run replaces its own, keeps the rest."""

from pathlib import Path

import pytest

from tests.test_bench_run import SYSTEM, ZEN4, fake_run

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ZEN3 = "AMD EPYC (Zen 3 class), AVX2"


@pytest.fixture
def bench_results(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports its sibling scripts by name
    import bench_results

    return bench_results


def zen4_documents() -> tuple[dict, dict]:
    local = fake_run(reps=1, prompt_lengths=(16,))[0]
    local.system = {**SYSTEM, "cpu_info": ZEN4.to_json()}
    return local.to_dict(), local.to_dict()


def test_the_checked_in_results_have_the_avx2_section_and_regenerate_unchanged(bench_results):
    text = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8")
    sections = {match["label"]: match["body"] for match in bench_results.SECTION.finditer(text)}
    assert ZEN3 in sections and sections[ZEN3].startswith(f"## {ZEN3}\n")
    slug = bench_results.cpu_slug(ZEN3)
    assert f"(results-{slug}.png)" in sections[ZEN3] and (BENCHMARKS / f"results-{slug}.json").exists()
    assert bench_results.merge_section(text, ZEN3, sections[ZEN3].splitlines()) == text


def test_a_run_on_another_cpu_adds_its_section_and_a_rerun_replaces_only_it(bench_results):
    existing = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8") + "\n## Realistic sizes\n\nkept as is\n"
    local, served = zen4_documents()
    label = bench_results.report.cpu_label(local["system"])
    slug = bench_results.cpu_slug(label)
    assert (label, slug) == ("AMD EPYC (Zen 4 class), AVX-512 VNNI", "amd-epyc-zen-4-class-avx-512-vnni")
    section = bench_results.cpu_section(local, served, [], slug)
    assert section[0] == f"## {label}" and "flags: avx2 fma avx512f avx512_vnni" in section[2]
    assert f"![side by side](results-{slug}.png)" in section

    merged = bench_results.merge_section(existing, label, section)
    labels = [match["label"] for match in bench_results.SECTION.finditer(merged)]
    assert labels == [ZEN3, label]
    assert merged.startswith(existing[: existing.index("<!-- end cpu -->")])  # the AVX2 section untouched
    assert merged.endswith("## Realistic sizes\n\nkept as is\n")  # and what other scripts wrote

    again = bench_results.merge_section(merged, label, [f"## {label}", "", "rerun"])
    bodies = {match["label"]: match["body"] for match in bench_results.SECTION.finditer(again)}
    assert list(bodies) == [ZEN3, label] and bodies[label] == f"## {label}\n\nrerun\n"
    assert again.count("kept as is") == 1


def test_a_new_file_gets_the_header_and_one_section(bench_results):
    text = bench_results.merge_section("", "X, AVX2", ["## X, AVX2", "", "figures"])
    assert text.startswith("# slmops benchmark results\n") and "One section per CPU" in text
    assert text.endswith("<!-- cpu: X, AVX2 -->\n## X, AVX2\n\nfigures\n<!-- end cpu -->\n")
