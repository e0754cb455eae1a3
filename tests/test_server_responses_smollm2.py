"""/v1/responses on SmolLM2 INT4: the same conversation answers as on /v1/chat/completions."""

import openai
import pytest

from tests.server_process import cached_server

pytestmark = pytest.mark.slow

MODEL = "smollm2-responses"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def oai(tmp_path_factory, smollm2_int4):
    process = cached_server(tmp_path_factory.mktemp("responses-smollm2"), smollm2_int4, MODEL, "--load-wait", "120")
    yield openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    assert process.stop() == 0


def test_a_response_is_the_chat_answer_whole_streamed_and_continued(oai):
    system = "You are a helpful assistant."
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": QUESTION}],
        max_tokens=24,
        temperature=0,
    )
    response = oai.responses.create(
        model=MODEL, instructions=system, input=QUESTION, max_output_tokens=24, temperature=0
    )
    assert response.output_text == chat.choices[0].message.content and "Paris" in response.output_text
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    with oai.responses.stream(
        model=MODEL, instructions=system, input=QUESTION, max_output_tokens=24, temperature=0
    ) as stream:
        deltas = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
    assert deltas == response.output_text
    follow_up = oai.responses.create(
        model=MODEL, previous_response_id=response.id, input="And of Italy?", max_output_tokens=16, temperature=0
    )
    assert follow_up.usage.input_tokens > response.usage.input_tokens + response.usage.output_tokens
