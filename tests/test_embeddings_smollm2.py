"""The embedded SmolLM2 as an embedding model: converted from its GGUF with --task embedding.

Exactness against transformers is checked on the tiny models (tests/test_embeddings.py); on
SmolLM2 the same check (transformers on the dequantized GGUF weights) costs a second
dequantization, ~20 s, so here only the behaviour a user sees is checked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the rug."),
    ("Stock markets fell sharply on Tuesday.", "Interest rates rose and shares dropped."),
]


@pytest.fixture(scope="module")
def smollm2_embed(tmp_path_factory, smollm2_gguf) -> Path:
    from slmops.convert import convert

    output = tmp_path_factory.mktemp("smollm2-embed") / "smollm2-embed-fp32"
    report = convert(smollm2_gguf, output, precision="fp32", task="embedding", log_level=0)
    assert "mean pooling (the default for decoder models)" in report.notes
    return output


def test_similar_sentences_score_higher_than_unrelated_ones(smollm2_embed):
    import slmops

    embedder = slmops.load(smollm2_embed)
    texts = [text for pair in PAIRS for text in pair]
    vectors = np.array(embedder.embed(texts))
    assert vectors.shape == (4, 576)
    similarity = vectors @ vectors.T
    for first, second, others in ((0, 1, (2, 3)), (2, 3, (0, 1))):
        assert similarity[first, second] > max(similarity[first, other] for other in others)
    alone = np.array(embedder.embed(texts[1]))  # padding in the batch changes nothing
    assert float(alone[0] @ vectors[1]) >= 0.9999
