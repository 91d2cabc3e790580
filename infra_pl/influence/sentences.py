"""Sentence-level scores (paper Eq. 7): token spans of sentences, removal variants, re-scoring.

Eq. 7 is counterfactual: I(y) = S(z) − S(z∖y), where z∖y is the conversation with sentence y
erased and *re-tokenised*. Removing a sentence shifts every later token, changes how its
neighbours tokenise and changes the context of every later token, so it is not a sum of token
scores. :func:`sentence_scores` re-scores each variant with :func:`instance_scores`; the cheap
sum of Eq. 9 token scores over the sentence's span is reported beside it only as an
approximation (it ignores the sentence's role as context for later tokens).

Sentence → token mapping: the chat template is rendered to text, the assistant content is
located in it, and each token's character span comes from the offsets mapping of a fast
tokenizer on that text; the token ids are checked against :func:`tokenize_chat` so the positions
are those the model is trained and scored on. Tokenizers without offsets fall back to
incremental prefix tokenisation (tokenise the text up to each boundary; the tokens shared with
the full tokenisation lie before it). With offsets, a token that overlaps several sentences goes
to the one it overlaps most and tokens lying wholly in the whitespace between sentences belong to
none; with the prefix fallback a token belongs to the sentence in which it ends (the two agree
unless one token straddles a sentence boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from infra_pl.data.chat_encoding import IGNORE_INDEX, TokenizedExample, collate_padded, tokenize_chat
from infra_pl.data.sentences import Sentence, remove_span, remove_spans
from infra_pl.ekfac.loss import LossFn, causal_lm_loss
from infra_pl.influence.instance import instance_scores
from infra_pl.influence.measurement import Directions, Modules
from infra_pl.influence.tokens import token_scores

Messages = Sequence[Mapping[str, Any]]
UNLIMITED = 1 << 30


def last_assistant_turn(messages: Messages) -> int:
    """Index in ``messages`` of the last assistant message (the one SFT labels matter most for)."""
    turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant message")
    return turns[-1]


def _check_turn(messages: Messages, turn: int | None) -> int:
    turn = last_assistant_turn(messages) if turn is None else turn
    if not 0 <= turn < len(messages) or messages[turn]["role"] != "assistant":
        raise ValueError(f"messages[{turn}] is not an assistant message")
    return turn


def _render(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def content_offset(tokenizer: Any, messages: Messages, turn: int) -> tuple[str, int]:
    """The rendered conversation and the character offset of ``messages[turn]``'s content in it.

    The content is searched for right after the rendered prefix (earlier turns + generation
    prompt), so identical text in an earlier turn cannot be mistaken for it.
    """
    rendered = _render(tokenizer, messages, add_generation_prompt=False)
    content = messages[turn]["content"]
    prefix = _render(tokenizer, messages[:turn], add_generation_prompt=True)
    start_at = len(prefix) if rendered.startswith(prefix) else 0
    offset = rendered.find(content, start_at)
    if offset < 0:
        raise ValueError(
            "the chat template does not render the assistant content verbatim; "
            "sentence offsets cannot be mapped to tokens"
        )
    return rendered, offset


def _token_char_spans_offsets(tokenizer: Any, rendered: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Character span of every token via the fast tokenizer's offsets; None if unusable."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) != ids:
        return None
    return [tuple(span) for span in encoded["offset_mapping"]]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _token_ranges_by_prefix(tokenizer: Any, rendered: str, ids: list[int], bounds: list[tuple[int, int]]) -> list[range]:
    """Token index range of each character span by tokenising the text up to its two ends."""

    def tokens_before(char: int) -> int:
        prefix_ids = tokenizer(rendered[:char], add_special_tokens=False)["input_ids"]
        return _common_prefix(list(prefix_ids), ids)

    return [range(tokens_before(start), tokens_before(end)) for start, end in bounds]


def _assign_by_overlap(char_spans: list[tuple[int, int]], bounds: list[tuple[int, int]]) -> list[list[int]]:
    """Token indices per sentence; each token goes to the sentence it overlaps most (ties: earlier)."""
    out: list[list[int]] = [[] for _ in bounds]
    for k, (s, e) in enumerate(char_spans):
        overlaps = [max(0, min(e, end) - max(s, start)) for start, end in bounds]
        best = max(range(len(bounds)), key=lambda i: (overlaps[i], -i)) if bounds else 0
        if bounds and overlaps[best] > 0:
            out[best].append(k)
    return out


def token_spans_for_sentences(
    tokenizer: Any,
    messages: Messages,
    sentences: Sequence[Sentence],
    assistant_turn_index: int | None = None,
    max_length: int | None = None,
    method: Literal["auto", "offsets", "prefix"] = "auto",
) -> list[list[int]]:
    """For each sentence of ``messages[assistant_turn_index]["content"]``, its target positions.

    Positions index the output of :func:`infra_pl.log_likelihood.target_log_probs` (and of
    :func:`token_scores`): position p scores input token p+1. Only target tokens (label ≠ -100)
    within ``max_length`` are listed. ``assistant_turn_index`` indexes ``messages`` (default: the
    last assistant message).
    """
    turn = _check_turn(messages, assistant_turn_index)
    example = tokenize_chat(tokenizer, messages, UNLIMITED)
    if example is None:
        return [[] for _ in sentences]
    rendered, offset = content_offset(tokenizer, messages, turn)
    bounds = [(offset + s.start, offset + s.end) for s in sentences]
    content = messages[turn]["content"]
    for sentence in sentences:
        if content[sentence.start : sentence.end] != sentence.text:
            raise ValueError(f"sentence at {sentence.start}:{sentence.end} does not match the assistant content")
    char_spans = _token_char_spans_offsets(tokenizer, rendered, example.input_ids) if method != "prefix" else None
    if char_spans is not None:
        indices = _assign_by_overlap(char_spans, bounds)
    elif method == "offsets":
        raise ValueError("offsets tokenisation unavailable or differs from the chat template's token ids")
    else:
        indices = [list(r) for r in _token_ranges_by_prefix(tokenizer, rendered, example.input_ids, bounds)]
    limit = len(example.labels) if max_length is None else min(max_length, len(example.labels))
    return [[k - 1 for k in ks if 1 <= k < limit and example.labels[k] != IGNORE_INDEX] for ks in indices]


def removal_variants(
    messages: Messages, sentences: Sequence[Sentence], assistant_turn_index: int | None = None
) -> list[list[dict[str, Any]]]:
    """One conversation per sentence, with that sentence cut from the assistant content.

    Messages are copied (the input is never modified); the cut uses
    :func:`infra_pl.data.sentences.remove_span`, which keeps the stronger separator between the
    neighbours.
    """
    turn = _check_turn(messages, assistant_turn_index)
    content = messages[turn]["content"]
    variants = []
    for sentence in sentences:
        copy = [dict(message) for message in messages]
        copy[turn]["content"] = remove_span(content, sentence)
        variants.append(copy)
    return variants


def kept_content_end(tokenizer: Any, messages: Messages, turn: int, max_length: int) -> int | None:
    """Characters of ``messages[turn]["content"]`` whose tokens survive truncation at ``max_length``.

    ``None`` when the conversation fits (nothing is cut). Otherwise the offset into the content
    where the kept tokens end (``len(content)`` when only the template's closing tokens were cut;
    0 when the cut falls before the content).
    """
    full = tokenize_chat(tokenizer, messages, UNLIMITED)
    if full is None or len(full.input_ids) <= max_length:
        return None
    rendered, offset = content_offset(tokenizer, messages, turn)
    content = messages[turn]["content"]
    spans = _token_char_spans_offsets(tokenizer, rendered, full.input_ids)
    if spans is not None:
        end = max(e for _, e in spans[:max_length]) if max_length > 0 else 0
    else:  # the largest content prefix whose tokens all lie within the first max_length tokens
        low, high = 0, len(content)
        while low < high:
            mid = (low + high + 1) // 2
            ids = tokenizer(rendered[: offset + mid], add_special_tokens=False)["input_ids"]
            if len(ids) <= max_length:
                low = mid
            else:
                high = mid - 1
        end = offset + low
    return max(0, min(end - offset, len(content)))


def tokenize_kept(tokenizer: Any, messages: Messages, turn: int) -> TokenizedExample | None:
    """The conversation tokenised with nothing after ``messages[turn]``'s content (no closing tokens).

    Why: a truncated training sequence ends inside the content, without the template's end-of-turn
    token; its counterfactuals must end at the same place, or they would gain targets it never had.
    """
    full = tokenize_chat(tokenizer, messages, UNLIMITED)
    if full is None:
        return None
    rendered, offset = content_offset(tokenizer, messages, turn)
    end = offset + len(messages[turn]["content"])
    spans = _token_char_spans_offsets(tokenizer, rendered, full.input_ids)
    if spans is not None:
        keep = sum(1 for start, _ in spans if start < end)
    else:
        keep = _common_prefix(list(tokenizer(rendered[:end], add_special_tokens=False)["input_ids"]), full.input_ids)
    ids, labels = full.input_ids[:keep], full.labels[:keep]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return TokenizedExample(ids, labels, full.prompt_ids, truncated=True)


def clip_to_kept(sentences: Sequence[Sentence], content: str, cut: int | None) -> tuple[list[int], list[Sentence]]:
    """The sentences that (partly) survive a cut at ``cut``, clipped to it, with their input indices.

    Sentences wholly past the cut never reached the model: they are left out (not scored 0).
    """
    if cut is None:
        return list(range(len(sentences))), list(sentences)
    kept, clipped = [], []
    for k, sentence in enumerate(sentences):
        if sentence.start >= cut:
            continue
        end = min(sentence.end, cut)
        text = content[sentence.start : end]
        if not text.strip():
            continue
        kept.append(k)
        clipped.append(Sentence(sentence.start, end, text, sentence.kind))
    return kept, clipped


@dataclass
class SentenceScores:
    """Sentence scores of one example, for M measurements and the S sentences that were scored.

    ``removal`` is Eq. 7 (re-scored counterfactual); ``token_sum`` is the approximation
    Σ_{t ∈ span} s_t (None when not requested); ``full`` is S(z) of the (kept) example.
    ``kept`` indexes the input sentences that were scored (all, unless the example is truncated at
    ``max_length``: sentences wholly past the cut are left out), ``clipped`` marks the one cut
    through, and ``cut`` is the content offset where truncation ends the kept text (None: no cut).
    """

    full: torch.Tensor  # [M]
    removal: torch.Tensor  # [S, M]: S(z) − S(z without sentence k)
    token_sum: torch.Tensor | None  # [S, M]: approximation, NOT Eq. 7
    spans: list[list[int]]
    kept: list[int] | None = None
    clipped: list[bool] | None = None
    cut: int | None = None

    @property
    def n_past_cut(self) -> int:
        return 0 if self.kept is None else self.n_input - len(self.kept)

    n_input: int = 0


def sentence_scores(
    model: nn.Module,
    tokenizer: Any,
    messages: Messages,
    sentences: Sequence[Sentence],
    directions: Directions,
    modules: Modules = None,
    *,
    max_length: int,
    assistant_turn_index: int | None = None,
    batch_size: int = 8,
    with_token_sum: bool = True,
    loss_fn: LossFn = causal_lm_loss,
) -> SentenceScores:
    """Eq. 7 for every sentence: the example and its S removal variants, each tokenised on its own.

    Variants are padded into batches of ``batch_size`` and scored with :func:`instance_scores`.
    A variant with no target token left (the sentence was the whole answer) scores 0: an example
    without targets contributes nothing to training.

    Truncation: when the example is longer than ``max_length``, the model was trained on a prefix.
    The counterfactuals are then built from that same kept content (removing a sentence must not
    pull previously cut tail tokens into S(z∖y)), sentences wholly past the cut are not scored,
    and a sentence cut through is removed only where it was kept (``clipped``).
    """
    turn = _check_turn(messages, assistant_turn_index)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    content = messages[turn]["content"]
    cut = kept_content_end(tokenizer, messages, turn, max_length)
    kept, scored = clip_to_kept(sentences, content, cut)
    clipped = [scored[j].end < sentences[k].end for j, k in enumerate(kept)]
    kept_text = content if cut is None else content[:cut]
    contents = [kept_text, *(remove_span(kept_text, sentence) for sentence in scored)]
    scores, features = _score_contents(model, tokenizer, messages, turn, contents, cut is not None, directions, modules,
                                       max_length=max_length, batch_size=batch_size, loss_fn=loss_fn)
    spans = token_spans_for_sentences(tokenizer, messages, scored, turn, max_length) if scored else []
    token_sum = None
    if with_token_sum:
        full_batch = collate_padded(features[:1], pad_id)
        per_token = token_scores(model, full_batch, directions, modules)[:, 0].detach().double().cpu()  # [M, T-1]
        token_sum = torch.stack([per_token[:, span].sum(dim=1) for span in spans]) if spans else torch.zeros(0, len(directions))
    return SentenceScores(full=scores[0], removal=scores[0] - scores[1:], token_sum=token_sum, spans=spans,
                          kept=kept, clipped=clipped, cut=cut, n_input=len(sentences))


def _score_contents(model, tokenizer, messages: Messages, turn: int, contents: Sequence[str], truncated: bool,
                    directions: Directions, modules: Modules, *, max_length: int, batch_size: int,
                    loss_fn: LossFn) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Instance scores [V, M] of the conversation with ``messages[turn]`` replaced by each of ``contents``.

    ``contents[0]`` is the example itself and must keep a target token. ``truncated``: the contents
    are the kept prefix of a cut example, tokenised without the template's closing tokens
    (:func:`tokenize_kept`); otherwise each is tokenised normally. A variant without any target
    token scores 0 (it trains on nothing).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokenized: list[TokenizedExample | None] = []
    for text in contents:
        conversation = [dict(m) for m in messages]
        conversation[turn]["content"] = text
        tokenized.append(tokenize_kept(tokenizer, conversation, turn) if truncated else tokenize_chat(tokenizer, conversation, max_length))
    if tokenized[0] is None:
        raise ValueError("the example has no target token within max_length")
    features = [{"input_ids": tok.input_ids, "labels": tok.labels, "index": k} for k, tok in enumerate(tokenized) if tok is not None]
    scores = torch.zeros(len(contents), len(directions), dtype=torch.float64)
    for start in range(0, len(features), batch_size):
        batch = collate_padded(features[start : start + batch_size], pad_id)
        scores[batch["index"]] = instance_scores(model, batch, directions, modules, loss_fn).detach().double().cpu()
    return scores, features


@dataclass
class JointRemoval:
    """S(z) and S(z without every sentence of a set) per named set (paper Table 2: "w/o exploration")."""

    names: list[str]
    full: torch.Tensor  # [M]
    without: torch.Tensor  # [K, M]: S(z∖Y_k), one counterfactual per set, re-tokenised
    n_sentences: list[int]

    @property
    def removal(self) -> torch.Tensor:
        """S(z) − S(z∖Y_k): what the whole set contributes (Eq. 7 for a set of sentences)."""
        return self.full - self.without


def joint_removal_scores(
    model: nn.Module,
    tokenizer: Any,
    messages: Messages,
    sentence_sets: Mapping[str, Sequence[Sentence]],
    directions: Directions,
    modules: Modules = None,
    *,
    max_length: int,
    assistant_turn_index: int | None = None,
    batch_size: int = 8,
    loss_fn: LossFn = causal_lm_loss,
) -> JointRemoval:
    """One counterfactual per named set of sentences, all of its sentences removed at once.

    The joint removal is not the sum of single removals (later sentences lose their context once,
    not once per removed sentence); this is the exact quantity the additive approximation
    S(z) − Σ_y I(y) stands in for. Truncation is handled as in :func:`sentence_scores`: sets are
    clipped to the kept content, and sentences past the cut are ignored.
    """
    turn = _check_turn(messages, assistant_turn_index)
    content = messages[turn]["content"]
    cut = kept_content_end(tokenizer, messages, turn, max_length)
    kept_text = content if cut is None else content[:cut]
    names, contents, counts = [], [kept_text], []
    for name, sentences in sentence_sets.items():
        _, clipped = clip_to_kept(list(sentences), content, cut)
        names.append(name)
        counts.append(len(clipped))
        contents.append(remove_spans(kept_text, clipped) if clipped else kept_text)
    scores, _ = _score_contents(model, tokenizer, messages, turn, contents, cut is not None, directions, modules,
                                max_length=max_length, batch_size=batch_size, loss_fn=loss_fn)
    return JointRemoval(names=names, full=scores[0], without=scores[1:], n_sentences=counts)
