"""Sentence scores (Eq. 7): token spans, removal variants, and re-scoring vs independent instance scores."""

from __future__ import annotations

import pytest
import torch
from influence_helpers import tiny_llama

from infra_pl.data.sentences import remove_span, split_sentences
from infra_pl.data.tokenize import collate_padded, tokenize_chat
from infra_pl.ekfac import find_tracked_modules, layer_shape
from infra_pl.influence import (
    Directions,
    content_offset,
    instance_scores,
    removal_variants,
    sentence_scores,
    token_scores,
    token_spans_for_sentences,
)

ANSWER = "Let me add. 3 + 4 = 7. Wait, let me check: 4 + 3 = 7.\n\nThe answer is \\boxed{7}."
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 3 + 4?"},
    {"role": "assistant", "content": ANSWER},
]
MAX_LENGTH = 256

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")  # torch JVP internals


@pytest.fixture(scope="module")
def setup(small_tokenizer):
    model = tiny_llama(vocab=len(small_tokenizer))
    modules = find_tracked_modules(model)
    gen = torch.Generator().manual_seed(0)
    directions = Directions(
        ["math", "code"],
        {n: torch.randn((2, *layer_shape(m).matrix_shape), generator=gen) for n, m in modules.items()},
    )
    return model, modules, directions


def test_spans_cover_each_sentence_exactly(small_tokenizer):
    sentences = split_sentences(ANSWER)
    assert len(sentences) == 4
    example = tokenize_chat(small_tokenizer, MESSAGES, MAX_LENGTH)
    spans = token_spans_for_sentences(small_tokenizer, MESSAGES, sentences, 2)
    assert spans == token_spans_for_sentences(small_tokenizer, MESSAGES, sentences, 2, method="prefix")
    for sentence, span in zip(sentences, spans):
        assert span == list(range(span[0], span[-1] + 1))  # contiguous target positions
        assert all(example.labels[p + 1] != -100 for p in span)
        assert small_tokenizer.decode([example.input_ids[p + 1] for p in span]).strip() == sentence.text
    # truncation drops positions past max_length
    cut = token_spans_for_sentences(small_tokenizer, MESSAGES, sentences, 2, max_length=spans[2][3] + 1)
    assert cut[:2] == spans[:2] and cut[2] == spans[2][:3] and cut[3] == []


def test_content_offset_picks_the_requested_turn(small_tokenizer):
    """Identical text in an earlier assistant turn must not be taken for the requested one."""
    messages = [*MESSAGES, {"role": "user", "content": "Again?"}, {"role": "assistant", "content": ANSWER}]
    rendered, first = content_offset(small_tokenizer, messages, 2)
    _, second = content_offset(small_tokenizer, messages, 4)
    assert rendered[first : first + len(ANSWER)] == rendered[second : second + len(ANSWER)] == ANSWER
    assert second > first
    sentences = split_sentences(ANSWER)
    late = token_spans_for_sentences(small_tokenizer, messages, sentences, 4)
    early = token_spans_for_sentences(small_tokenizer, messages, sentences, 2)
    assert all(a[0] > b[-1] for a, b in zip(late, early))


def test_removal_variants():
    sentences = split_sentences(ANSWER)
    variants = removal_variants(MESSAGES, sentences)
    assert len(variants) == 4
    assert MESSAGES[2]["content"] == ANSWER  # input untouched
    for sentence, variant in zip(sentences, variants):
        assert variant[:2] == MESSAGES[:2]
        assert variant[2]["content"] == remove_span(ANSWER, sentence)
        assert sentence.text not in variant[2]["content"]
    assert variants[1][2]["content"] == "Let me add. Wait, let me check: 4 + 3 = 7.\n\nThe answer is \\boxed{7}."
    with pytest.raises(ValueError, match="assistant"):
        removal_variants(MESSAGES, sentences, assistant_turn_index=1)


def _alone(model, tokenizer, messages, directions, modules) -> torch.Tensor:
    """Instance score of one conversation tokenised and scored on its own (batch of one, no padding)."""
    tok = tokenize_chat(tokenizer, messages, MAX_LENGTH)
    batch = collate_padded([{"input_ids": tok.input_ids, "labels": tok.labels, "index": 0}], tokenizer.pad_token_id)
    return instance_scores(model, batch, directions, modules)[0].double()


def test_sentence_score_is_difference_of_independent_instance_scores(small_tokenizer, setup):
    model, modules, directions = setup
    sentences = split_sentences(ANSWER)
    result = sentence_scores(
        model, small_tokenizer, MESSAGES, sentences, directions, modules, max_length=MAX_LENGTH, batch_size=3
    )
    assert result.removal.shape == result.token_sum.shape == (4, 2)
    full = _alone(model, small_tokenizer, MESSAGES, directions, modules)
    assert torch.allclose(result.full, full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))
    variants = removal_variants(MESSAGES, sentences)
    expected = torch.stack([full - _alone(model, small_tokenizer, v, directions, modules) for v in variants])
    scale = float(full.abs().max())
    assert float((result.removal - expected).abs().max()) < 1e-5 * scale
    # the token-sum approximation is the Eq. 9 scores summed over each span
    tok = tokenize_chat(small_tokenizer, MESSAGES, MAX_LENGTH)
    batch = collate_padded([{"input_ids": tok.input_ids, "labels": tok.labels, "index": 0}], small_tokenizer.pad_token_id)
    per_token = token_scores(model, batch, directions, modules)[:, 0].double()
    for k, span in enumerate(result.spans):
        assert torch.allclose(result.token_sum[k], per_token[:, span].sum(-1))
    assert not torch.allclose(result.token_sum, result.removal, rtol=1e-2)  # an approximation, not Eq. 7


def test_variant_without_targets_scores_zero(small_tokenizer, setup, monkeypatch):
    """A variant with no target left (tokenize_chat gives None) trains on nothing: S(z∖y) = 0."""
    import infra_pl.influence.sentences as module

    model, modules, directions = setup
    sentences = split_sentences(ANSWER)
    emptied = remove_span(ANSWER, sentences[0])
    real = module.tokenize_chat
    monkeypatch.setattr(
        module, "tokenize_chat", lambda tok, msgs, n: None if msgs[-1]["content"] == emptied else real(tok, msgs, n)
    )
    result = sentence_scores(
        model, small_tokenizer, MESSAGES, sentences, directions, modules, max_length=MAX_LENGTH, with_token_sum=False
    )
    assert result.token_sum is None
    assert torch.equal(result.removal[0], result.full)
    alone = _alone(model, small_tokenizer, removal_variants(MESSAGES, sentences)[1], directions, modules)
    assert torch.allclose(result.removal[1], result.full - alone, atol=1e-5 * float(result.full.abs().max()))
