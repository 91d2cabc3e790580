"""Sentence scores (Eq. 7): token spans, removal variants, and re-scoring vs independent instance scores."""

from __future__ import annotations

import pytest
import torch
from influence_helpers import tiny_llama

from infra_pl.data.chat_encoding import collate_padded, tokenize_chat
from infra_pl.data.sentences import remove_span, split_sentences
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


LONG = ("First, add the ones. 3 + 4 = 7. Then check it: 4 + 3 = 7. So the sum is 7. "
        "Alternatively, count up from 4 by three steps. That also gives 7. One more check on paper. The answer is 7.")
LONG_MESSAGES = [MESSAGES[0], MESSAGES[1], {"role": "assistant", "content": LONG}]


def test_truncated_example_counterfactuals_keep_the_trained_content(small_tokenizer, setup):
    """With right truncation, S(z∖y) must not gain tail tokens the model never saw, and sentences wholly
    past the cut are left out instead of scoring exactly 0 (issue 16, item 3)."""
    from infra_pl.influence.sentences import kept_content_end

    model, modules, directions = setup
    sentences = split_sentences(LONG)
    whole = tokenize_chat(small_tokenizer, LONG_MESSAGES, 1 << 30)
    spans = token_spans_for_sentences(small_tokenizer, LONG_MESSAGES, sentences, 2)
    max_length = spans[3][-1] + 2  # keep sentences 0-3 whole: the cut falls right after sentence 3
    assert len(whole.input_ids) > max_length
    cut = kept_content_end(small_tokenizer, LONG_MESSAGES, 2, max_length)
    assert sentences[3].end <= cut < sentences[4].end

    result = sentence_scores(model, small_tokenizer, LONG_MESSAGES, sentences, directions, modules,
                             max_length=max_length, with_token_sum=False)
    assert result.kept == [0, 1, 2, 3] + ([4] if cut > sentences[4].start else [])
    assert result.n_past_cut == len(sentences) - len(result.kept) >= 3
    # S(z) is the trained (truncated) example's score.
    trained = tokenize_chat(small_tokenizer, LONG_MESSAGES, max_length)
    batch = collate_padded([{"input_ids": trained.input_ids, "labels": trained.labels, "index": 0}], small_tokenizer.pad_token_id)
    expected_full = instance_scores(model, batch, directions, modules)[0].double()
    assert torch.allclose(result.full, expected_full, rtol=1e-4, atol=1e-4 * float(expected_full.abs().max()))
    # Removing sentence 1 scores the kept content without it, ending where the trained sequence ends.
    kept_text = LONG[:cut]
    variant = [*LONG_MESSAGES[:2], {"role": "assistant", "content": remove_span(kept_text, sentences[1])}]
    rendered = small_tokenizer.apply_chat_template(variant, tokenize=False)
    end = rendered.index(variant[2]["content"]) + len(variant[2]["content"])
    ids = small_tokenizer(rendered[:end], add_special_tokens=False)["input_ids"]
    tok = tokenize_chat(small_tokenizer, variant, 1 << 30)
    labels = tok.labels[: len(ids)]
    batch = collate_padded([{"input_ids": ids, "labels": labels, "index": 0}], small_tokenizer.pad_token_id)
    expected = result.full - instance_scores(model, batch, directions, modules)[0].double()
    assert torch.allclose(result.removal[1], expected, rtol=1e-4, atol=1e-4 * float(expected_full.abs().max()))
    # The old construction (re-tokenise the whole variant, truncate at max_length) pulls cut tail
    # tokens back in: a different number, which is what the issue reported.
    old = tokenize_chat(small_tokenizer, [*LONG_MESSAGES[:2], {"role": "assistant", "content": remove_span(LONG, sentences[1])}], max_length)
    assert len(old.input_ids) > len(ids)


def test_joint_removal_is_one_counterfactual_per_set_not_the_sum(small_tokenizer, setup):
    """Table 2 (paper): S(z) − S(z without all sentences of a behaviour), re-tokenised once."""
    from infra_pl.data.sentences import remove_spans
    from infra_pl.influence import joint_removal_scores

    model, modules, directions = setup
    sentences = split_sentences(LONG)
    sets = {"verification": [sentences[2], sentences[6]], "exploration": [sentences[4]], "both": [sentences[2], sentences[4], sentences[6]]}
    result = joint_removal_scores(model, small_tokenizer, LONG_MESSAGES, sets, directions, modules, max_length=MAX_LENGTH)
    assert result.names == list(sets) and result.n_sentences == [2, 1, 3]
    full = _alone(model, small_tokenizer, LONG_MESSAGES, directions, modules)
    assert torch.allclose(result.full, full, rtol=1e-5, atol=1e-5 * float(full.abs().max()))
    for k, chosen in enumerate(sets.values()):
        variant = [*LONG_MESSAGES[:2], {"role": "assistant", "content": remove_spans(LONG, chosen)}]
        expected = full - _alone(model, small_tokenizer, variant, directions, modules)
        assert torch.allclose(result.removal[k], expected, rtol=1e-4, atol=1e-5 * float(full.abs().max()))
    single = sentence_scores(model, small_tokenizer, LONG_MESSAGES, sentences, directions, modules, max_length=MAX_LENGTH,
                             with_token_sum=False)
    additive = single.removal[[2, 6]].sum(0)
    assert not torch.allclose(additive, result.removal[0], rtol=1e-3)  # the additive approximation differs
    assert remove_spans(LONG, sets["both"]).count("check") == 0
