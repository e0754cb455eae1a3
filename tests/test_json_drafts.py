"""Drafting JSON answers by their text: the prompt's next field at a key's place, a value's text
copied in other tokens. A small vocabulary spells the prompt's words with their leading space
and the answer's after a quote, as byte-level BPE tokenizers do."""

from __future__ import annotations

import json
import time

import pytest

import slmops
from slmops.runtime.batched import BatchedDecoder, Sequence
from slmops.runtime.json_drafts import JsonFields, TokenText, field_lists
from slmops.runtime.speculative import PromptLookup

WORDS = [
    ' "', '",\n', '": ', "  ", "\n", " supplier", "supplier", " customer", "customer", " contact", "contact",
    "_person", " Harbour", "Har", "bour", " Supplies", " Ltd", "Ltd", " Carrow", "Carrow", "From", "Extract",
    " as", " JSON", ".\n", " sold", " to",
]  # fmt: skip


class Vocabulary:
    """Greedy longest-match tokens over WORDS and single characters."""

    def __init__(self) -> None:
        self.pieces = sorted(set(WORDS), key=len, reverse=True)
        self.ids = {piece: index for index, piece in enumerate(sorted(set(WORDS)), start=1000)}
        self.texts = {index: piece for piece, index in self.ids.items()}

    def encode(self, text: str) -> list[int]:
        ids, at = [], 0
        while at < len(text):
            piece = next((p for p in self.pieces if text.startswith(p, at)), text[at])
            ids.append(self.ids[piece] if piece in self.ids else ord(piece))
            at += len(piece)
        return ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.texts.get(token, chr(token)) for token in ids)


PROMPT = "Extract supplier, customer, contact_person as JSON.\nFrom: Harbour Supplies Ltd sold to Carrow Ltd"


@pytest.fixture
def vocabulary() -> Vocabulary:
    return Vocabulary()


def lookup_after(vocabulary: Vocabulary, answer: str, text: bool = True) -> PromptLookup:
    lookup = PromptLookup(vocabulary.encode(PROMPT), TokenText(vocabulary.decode, vocabulary.encode) if text else None)
    for token in vocabulary.encode(answer):
        lookup.append(token)
    return lookup


def test_at_a_key_the_draft_is_the_field_the_prompt_lists_next(vocabulary):
    lookup = lookup_after(vocabulary, '{\n  "supplier": "Harbour Supplies Ltd",\n  "')
    assert lookup.draft(12) == vocabulary.encode('customer": "')
    assert lookup.draft(2) == vocabulary.encode('customer": "')[:2]
    # before the quote: the whitespace the answer wrote before its last key comes first
    lookup = lookup_after(vocabulary, '{\n  "supplier": "Harbour Supplies Ltd",\n')
    assert lookup.draft(12) == vocabulary.encode('  "customer": "')
    # the first key: the list's first item
    assert lookup_after(vocabulary, '{\n  "').draft(12) == vocabulary.encode('supplier": ')
    # nothing after the list's last item, and nothing for a key the prompt does not list
    assert lookup_after(vocabulary, '{"contact_person": "x", "').draft(12) == []
    assert lookup_after(vocabulary, '{"vendor": "x", "').draft(12) == []


def test_a_value_spelt_in_other_tokens_goes_on_as_the_prompt_does(vocabulary):
    answer = '{\n  "supplier": "Har'
    assert lookup_after(vocabulary, answer, text=False).draft(3) == []  # ' Harbour' is another token
    assert lookup_after(vocabulary, answer).draft(3) == vocabulary.encode("bour Supplies Ltd")
    # a key begun is finished; a value's first token is not guessed; a string holds no line break
    assert lookup_after(vocabulary, '{\n  "supplier": "Ltd",\n  "cust').draft(12) == vocabulary.encode('omer": "')
    assert lookup_after(vocabulary, '{"supplier": "Ltd", "customer": "').draft(12) == []
    assert lookup_after(vocabulary, '{"supplier": "Extract supplier as JSON', text=False).draft(2) == vocabulary.encode(
        ".\nFrom"
    )
    assert lookup_after(vocabulary, '{"supplier": "Extract supplier as JSON').draft(2) == []


def test_a_looked_up_piece_that_ends_a_value_is_followed_by_the_next_key(vocabulary):
    # The lookup drafts the end of the first line again ('",\n', "  ", '"', "customer"...); the next
    # key after "customer" is the list's, not the one the first line had.
    answer = '{\n  "supplier": "Ltd",\n  "customer": "Ltd'
    assert lookup_after(vocabulary, answer, text=False).draft(4) == vocabulary.encode('",\n  "customer')
    assert lookup_after(vocabulary, answer).draft(12) == vocabulary.encode('",\n  "contact_person": "')


def test_an_answer_that_is_not_json_drafts_as_the_token_lookup_does(vocabulary):
    answer = "From: Harbour Supplies Ltd sold to Carrow, Har"
    by_text, by_tokens = lookup_after(vocabulary, ""), lookup_after(vocabulary, "", text=False)
    for token in vocabulary.encode(answer):
        assert by_text.draft(8) == by_tokens.draft(8)
        by_text.append(token)
        by_tokens.append(token)


def test_the_prompts_lists_give_each_item_the_next():
    following, first = field_lists("Fields: name, date and total.\nAlso:\n- city\n- country\n- zip\nDear Ann, Bob")
    assert following == {"name": "date", "date": "total", "city": "country", "country": "zip"}
    assert first == "name"
    assert field_lists("a; b; c")[0] == {"a": "b", "b": "c"}
    assert field_lists("Hello, world") == ({}, None)  # two items are not a list
    quoted = field_lists("Return \"name\", `city` and 'zip' as JSON.")
    assert quoted == ({"name": "city", "city": "zip"}, "name")
    described = "Extract:\n- **supplier**: who sent it\n\n- customer: who pays\n2. `due_date` (a date)\nThanks, Ann"
    assert field_lists(described) == ({"supplier": "customer", "customer": "due_date"}, "supplier")
    assert field_lists("1. one\n\nSome text.\n- two\n")[0] == {}  # a list of one, twice


def test_token_text_keeps_the_leading_space_and_spells_text_after_a_character(tiny_onnx):
    model = slmops.load(tiny_onnx, threads=1)
    text = model.token_text
    assert "".join(text.piece(token) for token in model.encode("Hello world, again")) == "Hello world, again"
    assert text.tokens('city": "', after='"') == model.encode('"city": "')[1:]
    assert model.decode(text.tokens("brown fox")) == "brown fox"


PEOPLE = json.dumps(
    {
        "type": "object",
        "properties": {
            "name": {"enum": ["Ada", "Bob"]},
            "city": {"enum": ["Oslo", "Rome"]},
            "country": {"enum": ["Norway", "Italy"]},
        },
        "required": ["name", "city", "country"],
        "x-guidance": {"whitespace_flexible": False},  # a random model would write whitespace only
    }
)


def test_every_greedy_answer_keeps_the_text_for_json_drafts_and_its_greedy_tokens(tiny_onnx, monkeypatch):
    model = slmops.load(tiny_onnx, threads=1)
    prompt = "Give name, city, country as JSON: Ada lives in Oslo, Norway. " * 2
    kept: list[JsonFields] = []
    original = JsonFields.__init__

    def spy(self, text, prompt):
        original(self, text, prompt)
        kept.append(self)

    monkeypatch.setattr(JsonFields, "__init__", spy)
    options = {"temperature": 0, "guidance": ("json_schema", PEOPLE), "max_tokens": 60}
    plain = model.generate(prompt, speculative=False, **options)
    drafted = model.generate(prompt, **options)
    # onnxruntime-genai's guided answer reads one more token (an end of text) after the grammar ends
    assert drafted.tokens == plain.tokens[: len(drafted.tokens)] and drafted.text == plain.text
    assert json.loads(drafted.text)["country"] in ("Norway", "Italy")
    assert len(kept) == 1 and kept[0].answer == drafted.text and kept[0].next_field["city"] == "country"
    list(model.conversation(temperature=0, max_tokens=4).stream([{"role": "user", "content": prompt}]))
    decoder = BatchedDecoder(model, 1, 256)
    decoder.add([Sequence(model.encode(prompt), model.options(temperature=0, max_tokens=4), 4, time.perf_counter())])
    while decoder.busy:
        decoder.advance()
    assert len(kept) == 3 and all(fields.answer for fields in kept)  # a conversation's and a batch row's
