"""Influence scores on top of the EK-FAC factors (paper §3.2, Eqs. 6–9); plain torch, no Lightning.

Sign convention everywhere: S(z) = ∇fᵀH⁻¹∇log p(z) = vᵀ∇log p(z) = −vᵀ∇L(z) with v = H⁻¹∇f;
positive = up-weighting z raises f.

* :mod:`measurement` -- ∇f and f for f = mean log p(y|x) (Eq. 6); :class:`Directions` v = H⁻¹∇f.
* :mod:`instance`    -- S(z) for a batch and M measurements from one hooked backward; pairwise mode.
* :mod:`tokens`      -- Eq. 9 target-token scores for all t from one forward-mode JVP; and the
  kronfluence-style split by the position where weights act (a different decomposition).
* :mod:`sentences`   -- Eq. 7 sentence scores by re-scoring removal variants; token spans.
"""

from infra_pl.influence.instance import (
    choose_contraction,
    instance_scores,
    instance_scores_over,
    pairwise_scores,
    position_contributions,
    query_directions,
)
from infra_pl.influence.measurement import Directions, measurement_directions, measurement_gradient, measurement_value
from infra_pl.influence.sentences import (
    JointRemoval,
    SentenceScores,
    content_offset,
    joint_removal_scores,
    last_assistant_turn,
    removal_variants,
    sentence_scores,
    token_spans_for_sentences,
)
from infra_pl.influence.tokens import causal_lm_logits, token_scores, token_scores_by_position, token_scores_over

__all__ = [
    "Directions",
    "JointRemoval",
    "SentenceScores",
    "causal_lm_logits",
    "choose_contraction",
    "content_offset",
    "instance_scores",
    "instance_scores_over",
    "joint_removal_scores",
    "last_assistant_turn",
    "measurement_directions",
    "measurement_gradient",
    "measurement_value",
    "pairwise_scores",
    "position_contributions",
    "query_directions",
    "removal_variants",
    "sentence_scores",
    "token_scores",
    "token_scores_by_position",
    "token_scores_over",
    "token_spans_for_sentences",
]
