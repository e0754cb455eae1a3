"""The runtime on a tiny random model built at test time: fast, offline, exact."""

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime_genai as og
import psutil
import pytest
from click.testing import CliRunner

import slmops
from slmops.cli import cli
from slmops.errors import ContextTooLong, ModelNotFound, SlmopsError
from slmops.runtime import GenerationOptions, Model, Result

UNICODE = "Příliš žluťoučký kůň úpěl ďábelské ódy. 😀 你好，世界。"
CHATML = {
    "system": "<|im_start|>system\n{Content}<|im_end|>",
    "user": "<|im_start|>user\n{Content}<|im_end|>",
    "assistant": "<|im_start|>assistant\n{Content}<|im_end|>",
    "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n",
}


def linked_model(source: Path, folder: Path, inference_model: dict | None = None) -> Path:
    """A model folder whose files link to ``source``'s, plus its own inference_model.json."""
    folder.mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "inference_model.json":
            (folder / item.name).symlink_to(item)
    if inference_model is not None:
        (folder / "inference_model.json").write_text(json.dumps(inference_model), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_onnx) -> Model:
    return slmops.load(tiny_onnx, threads=1)


def bare_loop(model: Model, ids: list[int], max_tokens: int) -> list[int]:
    params = og.GeneratorParams(model.og_model)
    params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
    generator = og.Generator(model.og_model, params)
    generator.append_tokens(ids)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_greedy_tokens_match_a_bare_generator_loop(tiny):
    ids = tiny.encode("The quick brown fox")
    responses = list(tiny.stream_generate(ids, max_tokens=12))
    expected = bare_loop(tiny, ids, 12)
    assert [response.token for response in responses] == expected[: len(responses)]
    assert len(responses) == 12 or responses[-1].token in tiny.stop_token_ids


def test_result_fields_agree_with_the_stream(tiny):
    prompt = "Hello world, this is"
    responses = list(tiny.stream_generate(prompt, max_tokens=10, stop=()))
    result = tiny.generate(prompt, max_tokens=10)
    assert isinstance(result, Result)
    assert result.text == "".join(response.text for response in responses)
    assert result.prompt_tokens == len(tiny.encode(prompt)) == responses[0].prompt_tokens
    assert result.completion_tokens == len(responses) <= 10
    assert result.finish_reason == ("length" if len(responses) == 10 else "stop")
    assert [response.finish_reason for response in responses[:-1]] == [None] * (len(responses) - 1)
    assert 0 < result.ttft_s <= result.total_s
    assert result.completion_tokens == 1 or result.decode_tokens_per_s > 0


def test_stream_equals_chat_with_the_same_seed(tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}]
    options = dict(max_tokens=16, temperature=1.0, top_k=0, seed=11)
    assert "".join(tiny.stream(messages, **options)) == tiny.chat(messages, **options).text


def test_seed_reproduces_and_differs(tiny):
    def tokens(seed):
        return [r.token for r in tiny.stream_generate("Hello", max_tokens=24, temperature=1.5, top_k=0, seed=seed)]

    assert tokens(5) == tokens(5)
    assert tokens(5) != tokens(6)


def test_unicode_round_trips_through_the_tokenizer_stream(tiny):
    ids = tiny.encode(UNICODE)
    assert tiny.decode(ids) == UNICODE
    stream = tiny.tokenizer.create_stream()
    # Each piece is whole characters: a multi-byte character waits for its last byte.
    pieces = [stream.decode(token) for token in ids]
    assert "".join(pieces) == UNICODE and "\ufffd" not in "".join(pieces)


def test_generated_text_never_splits_a_character(tiny):
    # A random model emits byte-level tokens; the stream must still only yield valid text.
    responses = list(tiny.stream_generate(UNICODE, max_tokens=40, temperature=1.0, top_k=0, seed=2))
    text = "".join(response.text for response in responses)
    text.encode("utf-8")  # raises on a lone surrogate


@pytest.mark.parametrize("prompt", ["", "\x00", "a\x00b", "\x01\x02\x1b[31m\x7f", "\n\n\t", "\ud7ff\uffff"])
def test_odd_prompts_do_not_crash(tiny, prompt):
    result = tiny.generate(prompt, max_tokens=3)
    assert result.completion_tokens >= 1 and result.prompt_tokens >= 1
    chat = tiny.chat([{"role": "user", "content": prompt}], max_tokens=3)
    assert chat.completion_tokens >= 1


def test_prompt_longer_than_the_context_says_both_lengths(tiny):
    assert tiny.context_length == 512
    long_text = "fox " * 600
    with pytest.raises(ContextTooLong, match=r"The prompt is \d+ tokens but .* holds 512"):
        tiny.generate(long_text)
    with pytest.raises(ContextTooLong, match="truncate"):
        tiny.chat([{"role": "user", "content": long_text}])


def test_truncate_keeps_the_most_recent_turns(tiny):
    turn = "the quick brown fox jumps over the lazy dog " * 6
    history = []
    for index in range(12):
        history += [{"role": "user", "content": f"{index} {turn}"}, {"role": "assistant", "content": turn}]
    messages = [{"role": "system", "content": "SYSTEM"}, *history, {"role": "user", "content": "last question"}]
    with pytest.raises(ContextTooLong):
        tiny.prompt_ids(messages)
    ids = tiny.prompt_ids(messages, truncate=True)
    prompt = tiny.decode(ids)
    assert len(ids) < 512
    # decode() drops special tokens such as <|im_start|>
    assert prompt.startswith("system\nSYSTEM\nuser\n") and prompt.endswith("user\nlast question\nassistant\n")
    assert "11 the quick" in prompt and "\n0 the quick" not in prompt
    assert tiny.chat(messages, truncate=True, max_tokens=2).prompt_tokens == len(ids)
    with pytest.raises(ContextTooLong):  # one message alone that does not fit cannot be truncated
        tiny.chat([{"role": "user", "content": "fox " * 600}], truncate=True)


def test_max_tokens_is_clamped_to_the_context(tiny):
    ids = tiny.encode("fox " * 250)
    result = tiny.generate(ids[:505], max_tokens=100)
    assert result.prompt_tokens + result.completion_tokens <= 512
    assert result.finish_reason == "length" or result.completion_tokens < 7


def test_stop_strings_cut_the_answer(tiny):
    full = tiny.generate("Hello world", max_tokens=20).text
    assert len(full) > 4
    stop = full[2:4]
    cut = tiny.generate("Hello world", max_tokens=20, stop=[stop])
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_thread_count_is_set_at_load_time(tiny_onnx):
    genai_before = (tiny_onnx / "genai_config.json").read_bytes()
    process = psutil.Process()
    counts = []
    models = []
    for threads in (1, 3):
        before = process.num_threads()
        models.append(slmops.load(tiny_onnx, threads=threads))
        models[-1].generate("Hello", max_tokens=2)
        counts.append(process.num_threads() - before)
    # onnxruntime starts threads - 1 extra workers for its intra-op pool.
    assert counts[1] - counts[0] == 2
    assert [model.threads for model in models] == [1, 3]
    assert (tiny_onnx / "genai_config.json").read_bytes() == genai_before  # never written to


def test_default_threads_come_from_the_cpus_we_may_use(tiny_onnx, monkeypatch):
    import slmops.runtime.model as runtime_model

    monkeypatch.setattr(runtime_model, "default_threads", lambda: 2)
    assert slmops.load(tiny_onnx).threads == 2


def test_inference_model_json_gives_template_defaults_and_stop_token(tiny_onnx, tmp_path):
    folder = linked_model(
        tiny_onnx,
        tmp_path / "tiny-chatml",
        {
            "Name": "tiny-chat",
            "PromptTemplate": CHATML,
            "ModelConfig": {"max_length": 256, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1},
        },
    )
    model = slmops.load(folder, threads=1)
    assert model.name == "tiny-chat" and model.context_length == 256
    assert (model.defaults.temperature, model.defaults.top_p, model.defaults.repetition_penalty) == (0.7, 0.9, 1.1)
    assert model.options(temperature=0).temperature == 0 and model.options().top_p == 0.9
    assert model.encode("<|im_end|>")[0] in model.stop_token_ids
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert (
        model.render(messages)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_inference_model_json_the_tokenizer_template_is_used(tiny):
    assert tiny.render([{"role": "user", "content": "Hi"}]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_load_by_cache_name(tiny_onnx):
    from slmops.cache import store

    store.add(tiny_onnx, name="Tiny-Llama", link=True)
    model = slmops.load("tiny-llama", threads=1)
    assert model.name == "Tiny-Llama" and model.generate("Hi", max_tokens=2).completion_tokens >= 1


def test_unknown_names_and_folders_are_model_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        slmops.load("no-such-model")
    with pytest.raises(ModelNotFound, match="genai_config.json"):
        slmops.load(tmp_path)
    with pytest.raises(SlmopsError):
        slmops.load("../escape")


def test_invalid_options_are_refused_before_generating(tiny):
    with pytest.raises(SlmopsError, match="temperature"):
        tiny.generate("Hi", temperature=-1)
    with pytest.raises(SlmopsError, match="Unknown generation option"):
        tiny.chat([{"role": "user", "content": "Hi"}], colour="red")
    assert GenerationOptions().replace(max_tokens=None).max_tokens is None


# ---- CLI ----------------------------------------------------------------------


def test_cli_one_shot_prints_only_the_answer(tiny, tiny_onnx):
    expected = tiny.chat([{"role": "user", "content": "Hello"}], max_tokens=8).text
    result = CliRunner().invoke(
        cli, ["model", "run", str(tiny_onnx), "--prompt", "Hello", "--max-tokens", "8", "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == expected + "\n"


def test_cli_reads_the_prompt_from_stdin(tiny, tiny_onnx):
    expected = tiny.chat([{"role": "user", "content": "Hello"}], max_tokens=8).text
    result = CliRunner().invoke(cli, ["model", "run", str(tiny_onnx), "--max-tokens", "8"], input="Hello")
    assert result.exit_code == 0 and result.stdout == expected + "\n"


def test_cli_context_overflow_is_a_one_line_error(tiny_onnx):
    from slmops.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["model", "run", str(tiny_onnx), "--prompt", "fox " * 600])
    assert exit_info.value.code == 1


def test_cli_list_and_info(tiny_onnx):
    from slmops.cache import store

    store.add(tiny_onnx, name="tiny-listed", link=True)
    listed = CliRunner().invoke(cli, ["model", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [row["name"] for row in rows] == ["tiny-listed"] and rows[0]["loaded"] is None
    assert rows[0]["context_length"] == 512
    info = CliRunner().invoke(cli, ["model", "info", "TINY-listed", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.stdout)
    assert data["name"] == "tiny-listed" and data["precision"] == "fp32" and data["size_bytes"] > 0
    assert data["template"]["prompt"].startswith("<|im_start|>user")  # written by `cache add`
    text = CliRunner().invoke(cli, ["model", "info", "tiny-listed"])
    assert "context length:  512" in text.stdout and "precision:       fp32" in text.stdout


def test_model_list_shows_what_a_service_has_loaded(tiny_onnx, monkeypatch):
    from slmops.cache import store
    from slmops.runtime import listing

    store.add(tiny_onnx, name="tiny-a", link=True)
    store.add(tiny_onnx, name="tiny-b", link=True)
    monkeypatch.setattr(listing, "loaded_models", lambda: {"tiny-b"})
    rows = {row["name"]: row["loaded"] for row in listing.list_models()}
    assert rows == {"tiny-a": False, "tiny-b": True}
    table = CliRunner().invoke(cli, ["model", "list"])
    assert "loaded" in table.stdout and "yes" in table.stdout


NO_TORCH = """
import atexit, importlib.abc, sys
EXTRAS = ("torch", "transformers", "onnx", "onnxscript", "onnx_ir", "safetensors", "gguf", "peft", "jinja2")
class NotInstalled(importlib.abc.MetaPathFinder):
    # As if the [convert] extras were not installed at all.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NotInstalled())
def check():
    heavy = sorted(name for name in ("torch", "transformers", "onnx", "jinja2") if name in sys.modules)
    sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
atexit.register(check)
from slmops.cli import main
main(sys.argv[1:])
"""


def test_model_run_never_imports_torch_or_transformers(tiny_onnx):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "model", "run", str(tiny_onnx), "--prompt", "Hello", "--max-tokens", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != "" or done.stdout == "\n"
    assert "HEAVY=\n" in done.stderr, done.stderr


def test_guidance_constrains_the_answer(tiny):
    result = tiny.generate("Hello", max_tokens=10, guidance=("regex", "[ab]{3}"))
    assert result.text == result.text.strip() and len(result.text) == 3 and set(result.text) <= {"a", "b"}
    assert result.finish_reason == "stop"


def test_broken_folders_give_one_line_errors(tiny_onnx, tmp_path):
    bad_json = linked_model(tiny_onnx, tmp_path / "bad-json")
    (bad_json / "inference_model.json").write_text('{"Name": ', encoding="utf-8")
    with pytest.raises(SlmopsError, match="inference_model.json"):
        slmops.load(bad_json)
    no_onnx = tmp_path / "no-onnx"
    no_onnx.mkdir()
    for name in ("genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        (no_onnx / name).symlink_to(tiny_onnx / name)
    with pytest.raises(SlmopsError, match="Could not load the model in .*no-onnx"):
        slmops.load(no_onnx)


def test_conversation_keeps_its_kv_cache_between_turns(tiny):
    conversation = tiny.conversation(max_tokens=6)
    messages = [{"role": "user", "content": "Hello world"}]
    first = slmops.runtime.collect(conversation.stream(messages))
    assert first.text == tiny.chat(messages, max_tokens=6).text  # the first turn is an ordinary answer
    assert first.completion_tokens <= 6
    generator = conversation.generator
    messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "the quick brown fox"}]
    second = slmops.runtime.collect(conversation.stream(messages))
    assert conversation.generator is generator  # rewound and extended, not rebuilt
    assert second.prompt_tokens == len(tiny.prompt_ids(messages)) and second.completion_tokens >= 1
    held = list(generator.get_sequence(0))
    assert held[: second.prompt_tokens] == tiny.prompt_ids(messages)


def test_conversation_survives_an_abandoned_answer_and_a_new_start(tiny):
    conversation = tiny.conversation(max_tokens=20)
    messages = [{"role": "user", "content": "Hello world"}]
    stream = conversation.stream(messages)
    next(stream)
    stream.close()  # what Ctrl-C does to an answer
    again = slmops.runtime.collect(conversation.stream(messages))
    assert again.text == tiny.chat(messages, max_tokens=20).text
    other = [{"role": "system", "content": "fox"}, {"role": "user", "content": "dog"}]
    assert slmops.runtime.collect(conversation.stream(other)).text == tiny.chat(other, max_tokens=20).text
