"""What `slmops bench --scenario` asks: the conversations, system prompts and tasks of each scenario.

Defined once here; ``benchmarks/speculative.py`` and ``benchmarks/serve_speculative.py``
read the tasks from this module too. Prompts are sized in tokens of the model measured
(its ``tokenizer.json``), at most a share of its context, so the same scenario fits a
tiny test model and SmolLM2 alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

# ---- the scenarios and their targets ------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One scenario of `slmops bench --scenario`.

    Attributes:
        name: what ``--scenario`` calls it.
        kind: "serve" (over HTTP, a loopback `slmops serve`) or "runtime" (in this process).
        what: one line for the help and the table.
    """

    name: str
    kind: str
    what: str


SCENARIOS = {
    scenario.name: scenario
    for scenario in (
        Scenario("multi-turn", "serve", "a ~1,000-token chat: TTFT of its next turn over its first turn's"),
        Scenario("system-prompt", "serve", "8 users, one ~500-token system prompt: median TTFT over the cold one"),
        Scenario("burst", "serve", "8 streams arriving together: median and p95 TTFT, aggregate tok/s"),
        Scenario(
            "grounded",
            "runtime",
            "copy, rewrite, extract to JSON (also held to a schema), edit code: decode tok/s speculative/plain",
        ),
        Scenario("chat", "runtime", "open chat: decode tok/s speculative/plain"),
    )
}
ALL = "all"


def chosen(names: tuple[str, ...] | list[str]) -> list[str]:
    """The scenarios ``--scenario`` names, in the order of :data:`SCENARIOS` (``all``: every one).

    Raises:
        ValueError: a name that is no scenario (the message lists them).
    """
    unknown = [name for name in names if name != ALL and name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenario {unknown[0]!r}; choose from {', '.join([*SCENARIOS, ALL])}")
    wanted = set(SCENARIOS) if ALL in names else set(names)
    return [name for name in SCENARIOS if name in wanted]


# ---- sizes ----------------------------------------------------------------------

CONVERSATION_TOKENS = 1000
SYSTEM_PROMPT_TOKENS = 500
BURST_PROMPT_TOKENS = 120
USERS = 8
STREAMS = 8
# Shares of the context a prompt may take, so that an answer and a next turn still fit.
CONVERSATION_SHARE = 0.55
SYSTEM_PROMPT_SHARE = 0.45
BURST_SHARE = 0.3

Count = Callable[[str], int]


def sized(tokens: int, context: int, share: float) -> int:
    """``tokens``, or less when that would take more than ``share`` of ``context``."""
    return max(16, min(tokens, int(context * share)))


def paragraphs() -> list[str]:
    """The paragraphs of the prose shipped for benchmarks (``slmops/data/bench_prompts.txt``)."""
    text = resources.files("slmops").joinpath("data/bench_prompts.txt").read_text(encoding="utf-8")
    return [block.strip() for block in text.split("\n\n") if block.strip()]


def prose(count: Count, tokens: int, start: int = 0) -> str:
    """Paragraphs from ``start`` on, cut to about ``tokens`` tokens."""
    blocks, text = paragraphs(), ""
    for index in range(len(blocks)):
        block = blocks[(start + index) % len(blocks)]
        if count(text + "\n" + block) > tokens:
            return text + "\n" + _cut(count, block, tokens - count(text))
        text += "\n" + block
    return text


def _cut(count: Count, block: str, tokens: int) -> str:
    words = block.split()
    while words and count(" ".join(words)) > tokens:
        words = words[: max(1, len(words) * 3 // 4)] if len(words) > 1 else []
    return " ".join(words)


# ---- the serving scenarios ---------------------------------------------------------

QUESTIONS = [
    "Summarise the first paragraph in one sentence.",
    "What is the main idea of the text about bread?",
    "Name two things the keeper wrote in his logbook.",
    "Why did the clock run slow?",
    "What do beekeepers use smoke for?",
    "How did surveyors measure a base line?",
    "What does a sourdough starter need?",
    "Why were maps called arguments?",
]
NEXT_QUESTION = "Tell me more."


def conversation(tag: str, count: Count, tokens: int) -> list[dict]:
    """A chat of about ``tokens`` tokens: a system prompt and earlier turns, ending with a question.

    ``tag`` opens it, so that nothing of an earlier round is cached.
    """
    messages = [{"role": "system", "content": f"Session {tag}. You are a helpful assistant."}]
    blocks, index = paragraphs(), 0
    question = "Which of these passages did you like best, and why?"

    def size() -> int:
        return count(" ".join(message["content"] for message in messages))

    while size() < tokens and index < 2 * len(blocks):
        room = tokens - size()
        passage, reply = blocks[index % len(blocks)], blocks[(index + 1) % len(blocks)]
        messages += [
            {"role": "user", "content": f"Here is a passage:\n{_cut(count, passage, room)}\nWhat is it about?"},
            {"role": "assistant", "content": _cut(count, reply, max(8, room - count(passage)))},
        ]
        index += 2
    return [*messages, {"role": "user", "content": question}]


def system_prompt(tag: str, count: Count, tokens: int) -> str:
    """A system prompt of about ``tokens`` tokens over reference prose, opened by ``tag``."""
    head = f"Session {tag}. You answer questions about the reference text below.\n"
    return head + prose(count, tokens - count(head))


def ask(system: str, question: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def burst_chats(tag: str, count: Count, tokens: int) -> list[list[dict]]:
    """8 different prompts of about ``tokens`` tokens each, nothing shared between them."""
    return [
        [{"role": "user", "content": f"{tag}-{index}: summarise this.\n{prose(count, tokens, start=index)}"}]
        for index in range(STREAMS)
    ]


# ---- the decoding scenarios: input-grounded tasks and open chat ---------------------


class Task(NamedTuple):
    """A task of the decoding scenarios: "grounded" (its answer copies from its prompt) or "open";
    with a ``schema``, its answer is held to that JSON schema (``response_format``, ``guidance``)."""

    kind: str
    prompt: str
    schema: dict[str, Any] | None = None

    @property
    def guidance(self) -> tuple[str, str] | None:
        """The schema as the runtime takes it, ``("json_schema", text)``."""
        return ("json_schema", json.dumps(self.schema)) if self.schema else None


PASSAGE = (
    "The lighthouse at Carrow Point was built in 1868 to guide fishing boats past the reef that "
    "lies half a mile off the northern shore. For almost a century its keepers lived in the small "
    "stone cottage beside the tower, climbing the one hundred and twelve steps every evening to "
    "light the lamp and every morning to put it out. The first keeper, Thomas Reid, kept a diary "
    "that still survives. In it he wrote about storms that lasted for days, about ships that "
    "came too close to the rocks, and about the long quiet winters when no boat went out at all. "
    "In 1954 the lamp was replaced by an electric light that switched itself on at dusk, and the "
    "last keeper left the cottage the following spring. Today the tower belongs to a local trust. "
    "Volunteers open it to visitors on summer weekends, and from the gallery at the top you can "
    "see the whole bay, the reef, and on a clear day the hills on the far side of the water. "
    "The cottage has become a small museum. It holds the keepers' logbooks, a brass telescope, "
    "photographs of the old lamp, and a model of the schooner Margaret, which ran onto the reef "
    "in 1871 when fog hid the light. All eleven of her crew were saved by men who rowed out "
    "from the village in two small boats, and their names are written on a board by the door."
)
MISSPELLINGS = {
    "guide": "giude",
    "century": "centery",
    "climbing": "climing",
    "survives": "survive",
    "storms": "stroms",
    "quiet": "quite",
    "replaced": "replased",
    "Volunteers": "Volunters",
    "visitors": "visiters",
    "photographs": "fotographs",
    "which ran": "which run",
    "their names": "there names",
}
DOCUMENT = (
    "From: Harbour Supplies Ltd, 14 Quay Street, Port Ellen\n"
    "To: Carrow Point Lighthouse Trust\n"
    "Date: 3 March 2025\n\n"
    "INVOICE No. HS-20931\n\n"
    "Dear Ms Alison Grant,\n\n"
    "Thank you for your order of 20 February. Please find below the details of the goods we "
    "delivered to the lighthouse cottage on 27 February: two replacement window frames in "
    "painted oak, forty litres of weatherproof paint (white), and one brass door handle. The "
    "total due is 1,482.50 GBP including VAT. Payment is due within 30 days, by 2 April 2025, "
    "to account number 40-22-18 31926604. Our contact for this order is David Munro, telephone "
    "01496 302 118.\n\nKind regards,\nHarbour Supplies Ltd"
)
FIELDS = "supplier, customer, contact_person, invoice_number, invoice_date, delivery_date, total_amount, due_date"
# The extraction's fields as a JSON schema, for answers held to it (``response_format``).
FIELDS_SCHEMA = {
    "type": "object",
    "properties": {field: {"type": "string"} for field in FIELDS.split(", ")},
    "required": FIELDS.split(", "),
    "additionalProperties": False,
}
FUNCTIONS = [
    ("parse_line", "line", "    key, _, value = line.partition('=')\n    return key.strip(), value.strip()"),
    (
        "read_config",
        "path",
        "    with open(path, encoding='utf-8') as handle:\n"
        "        return dict(parse_line(line) for line in handle if line.strip())",
    ),
    (
        "total_price",
        "items",
        "    total = 0\n    for item in items:\n        total += item['price'] * item['count']\n    return total",
    ),
    ("average", "values", "    if not values:\n        return 0.0\n    return sum(values) / len(values)"),
    (
        "slugify",
        "text",
        "    words = text.lower().split()\n    return '-'.join(word.strip('.,;:!?') for word in words)",
    ),
    (
        "largest",
        "values",
        "    best = None\n    for value in values:\n        if best is None or value > best:\n"
        "            best = value\n    return best",
    ),
    (
        "count_words",
        "text",
        "    counts = {}\n    for word in text.split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts",
    ),
    (
        "clamp",
        "value, low, high",
        "    if value < low:\n        return low\n    if value > high:\n        return high\n    return value",
    ),
]


def misspelt() -> str:
    """:data:`PASSAGE` with twelve spelling and grammar mistakes for the rewrite task to correct."""
    text = PASSAGE
    for right, wrong in MISSPELLINGS.items():
        text = text.replace(right, wrong)
    return text


def code_file() -> str:
    """A 60-line Python file of eight small functions, for the task that changes one of them."""
    functions = [
        f'def {name}({argument}):\n    """{name.replace("_", " ").capitalize()}."""\n{body}\n'
        for name, argument, body in FUNCTIONS
    ]
    return "import os\nimport sys\n\n\n" + "\n\n".join(functions)


EXTRACT = Task("grounded", f"Extract these fields from the document as a JSON object: {FIELDS}.\n\n{DOCUMENT}")
TASKS = {
    "copy": Task("grounded", f"Repeat the following passage exactly, word for word:\n\n{PASSAGE}"),
    "rewrite": Task(
        "grounded", f"Rewrite this passage with its spelling mistakes corrected. Change nothing else.\n\n{misspelt()}"
    ),
    "extract": EXTRACT,
    "extract-schema": EXTRACT._replace(schema=FIELDS_SCHEMA),
    "code": Task(
        "grounded",
        "Change the function `average` so that it returns None for an empty list. Reply with the whole "
        f"file.\n\n```python\n{code_file()}```",
    ),
    "chat-story": Task("open", "Write a short story about a cat who learns to sail."),
    "chat-explain": Task("open", "Explain how a refrigerator keeps food cold, for a ten-year-old."),
}
TARGETS = {"grounded": 1.8, "open": 0.97}


def tasks_of(kind: str) -> list[str]:
    return [name for name, task in TASKS.items() if task.kind == kind]
