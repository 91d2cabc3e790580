"""Sentence scores (Eq. 7) and joint behaviour removal (paper Table 2) for the top examples.

Direct computations on one process (a few dozen examples, each re-scored once per removal
variant), not data passes: the score driver calls them on the main rank after the instance
scores have chosen the examples.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from infra_pl.console import log
from infra_pl.data.schema import BEHAVIOURS
from infra_pl.influence.tables import tagger_label

JOINT_SETS = {"exploration+verification": ("exploration", "verification")}  # Table 2 (left) removes both too


def sentence_table(model, datamodule, tracked, directions, instance_df, names, tagged, top_k: int, loss_fn, logits_fn,
                   tagger: Any, device: Any) -> pd.DataFrame:
    """Eq. 7 rows for the top examples; behaviour labels from the whole-trace tags (by offsets).

    Sentences wholly past the ``max_length`` cut are not scored (they never reached the model);
    their count per example goes to ``attrs["sentences_past_cut"]`` of the returned frame.
    """
    from infra_pl.data.sentences import split_sentences
    from infra_pl.data.tagging import sentence_labels
    from infra_pl.influence import sentence_scores

    dirs = directions.to(device)
    ids = list(datamodule.attribution_ids("train"))
    chosen: dict[int, list[str]] = {}
    for name in names:
        for index in instance_df.nlargest(top_k, f"score_{name}")["index"]:
            chosen.setdefault(int(index), []).append(name)
    rows = []
    past_cut: dict[str, int] = {}
    for index, measured in chosen.items():
        example = datamodule.attribution_example("train", index)
        messages = example["messages"]
        turn = max(i for i, msg in enumerate(messages) if msg["role"] == "assistant")
        sentences = [s for s in split_sentences(messages[turn]["content"]) if s.kind != "marker"]
        if not sentences:
            continue
        result = sentence_scores(
            model, datamodule.tokenizer, messages, sentences, dirs, tracked,
            max_length=datamodule.max_length, assistant_turn_index=turn, with_token_sum=False, loss_fn=loss_fn,
        )
        if result.n_past_cut:
            past_cut[ids[index]] = result.n_past_cut
        scored = [sentences[k] for k in result.kept]
        if not scored:
            continue
        token_sum = token_sums(model, datamodule.tokenizer, messages, datamodule.max_length, dirs, tracked, logits_fn, result.spans)
        labels = sentence_labels(tagged[index], scored) if tagged is not None else [[] for _ in scored]
        for m, name in enumerate(names):
            for j, sentence in enumerate(scored):
                rows.append(
                    {
                        "id": ids[index],
                        "index": index,
                        "measurement": name,
                        "top_for": ",".join(measured),
                        "sentence_index": result.kept[j],
                        "text": sentence.text,
                        "kind": sentence.kind,
                        "behaviours": labels[j],
                        "score_removal": float(result.removal[j, m]),
                        "score_token_sum": float(token_sum[j, m]),
                        "n_tokens": len(result.spans[j]),
                        "clipped": bool(result.clipped[j]),
                    }
                )
    if past_cut:
        log(f"sentence scores: {sum(past_cut.values())} sentence(s) of {len(past_cut)} example(s) lie wholly past "
             f"max_length={datamodule.max_length} and are left out (never trained on)")
    frame = pd.DataFrame(rows)
    frame.attrs["sentences_past_cut"] = past_cut
    frame.attrs["tagged_by"] = tagger_label(tagger)
    return frame


def behaviour_removal_table(model, datamodule, tracked, directions, instance_df, names, tagged, top_k: int, loss_fn,
                            device: Any) -> pd.DataFrame:
    """Paper Table 2 (left): for each measurement and behaviour, the top ``removal_top_k`` examples
    *that show it*, scored once with all of its sentences removed (one re-tokenised
    counterfactual), beside the additive approximation (the sum of its single removals)."""
    from infra_pl.data.sentences import Sentence
    from infra_pl.influence import joint_removal_scores, sentence_scores

    if tagged is None:
        return pd.DataFrame()
    parts = {b: (b,) for b in BEHAVIOURS} | {name: tuple(p) for name, p in JOINT_SETS.items()}
    shows = {name: [all(tagged[int(i)].counts()[b] > 0 for b in members) for i in instance_df["index"]]
             for name, members in parts.items()}
    selected: dict[int, dict[str, set[str]]] = {}
    for measurement in names:
        for name in parts:
            candidates = instance_df[shows[name]]
            for index in candidates.nlargest(top_k, f"score_{measurement}")["index"]:
                selected.setdefault(int(index), {}).setdefault(name, set()).add(measurement)
    dirs = directions.to(device)
    ids = list(datamodule.attribution_ids("train"))
    rows = []
    for index, chosen in sorted(selected.items()):
        messages = datamodule.attribution_example("train", index)["messages"]
        turn = max(i for i, msg in enumerate(messages) if msg["role"] == "assistant")
        content = messages[turn]["content"]
        sets = {name: [Sentence(a, b, content[a:b], "text") for a, b, labels in tagged[index].spans
                       if set(parts[name]) & set(labels)] for name in chosen}
        joint = joint_removal_scores(model, datamodule.tokenizer, messages, sets, dirs, tracked,
                                     max_length=datamodule.max_length, assistant_turn_index=turn, loss_fn=loss_fn)
        singles = sorted({(s.start, s.end): s for members in sets.values() for s in members}.values(), key=lambda s: s.start)
        single = sentence_scores(model, datamodule.tokenizer, messages, singles, dirs, tracked,
                                 max_length=datamodule.max_length, assistant_turn_index=turn, with_token_sum=False,
                                 loss_fn=loss_fn)
        position = {singles[k].start: j for j, k in enumerate(single.kept)}
        for k, name in enumerate(joint.names):
            for m, measurement in enumerate(names):
                if measurement not in chosen[name] or joint.n_sentences[k] == 0:  # all its sentences past the cut
                    continue
                additive = sum(float(single.removal[position[s.start], m]) for s in sets[name] if s.start in position)
                rows.append({
                    "id": ids[index], "index": index, "measurement": measurement, "removed": name,
                    "n_sentences": joint.n_sentences[k], "score_full": float(joint.full[m]),
                    "score_without": float(joint.without[k, m]), "score_removal_joint": float(joint.removal[k, m]),
                    "score_removal_additive": additive,
                })
    log(f"behaviour removal: {len(rows)} joint counterfactuals over {len(selected)} examples "
         f"(top {top_k} showing each behaviour, per measurement)")
    return pd.DataFrame(rows)


def token_sums(model, tokenizer, messages, max_length, directions, tracked, logits_fn, spans: list[list[int]]) -> torch.Tensor:
    """The cheap approximation beside Eq. 7: Σ of the Eq. 9 token scores over each sentence, [S, M].

    Computed here (not inside ``sentence_scores``) so it runs through the module's own
    ``attribution_logits``, whatever network that is.
    """
    from infra_pl.data.chat_encoding import collate_padded, tokenize_chat
    from infra_pl.influence import token_scores

    tokenized = tokenize_chat(tokenizer, messages, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = collate_padded([{"input_ids": tokenized.input_ids, "labels": tokenized.labels, "index": 0}], pad_id)
    per_token = token_scores(model, batch, directions, tracked, logits_fn=logits_fn)[:, 0].detach().double().cpu()  # [M, T-1]
    if not spans:
        return torch.zeros(0, len(directions), dtype=torch.float64)
    return torch.stack([per_token[:, span].sum(dim=1) for span in spans])
