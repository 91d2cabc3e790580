"""Adapters for the paper's training sets: each maps one hub schema (as on its dataset card) to ours.

Importing this module registers every public-dataset adapter by name (the evaluation sets live in
:mod:`infra_pl.data.eval_adapters`; :mod:`infra_pl.data.sources` imports both). Common options, the ``bad_rows``
policy and the skipped-row summary are described in :mod:`infra_pl.data.adapter_base`.

==================  ===============================================  ==========================
adapter             hub dataset (columns used)                       domain / category
==================  ===============================================  ==========================
metamathqa          meta-math/MetaMathQA (type, query, response,     math / ``type`` (GSM_FOBAR..)
                    original_question)
magicoder           ise-uiuc/Magicoder-OSS-Instruct-75K (lang,       code / ``lang``
                    problem, solution); Evol-Instruct-110K
                    (instruction, response)
bespoke_stratos     bespokelabs/Bespoke-Stratos-17k (system,         inferred from the prompt /
                    conversations[{from, value}])                    stdin, call_based, math
openthoughts        open-thoughts/OpenThoughts-114k: ``default``     as bespoke_stratos, or
                    config (system, conversations) or ``metadata``   metadata ``domain`` /
                    config (problem, deepseek_reasoning, ...)        metadata ``source``
==================  ===============================================  ==========================
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

from infra_pl.data.adapter_base import (
    JOIN_KEY,
    SYSTEM_PRESETS,
    AdapterContext,
    RowFiltered,
    RowProblem,
    chat,
    register,
    require,
)
from infra_pl.data.behaviours import count_behaviours
from infra_pl.data.schema import RowLocation
from infra_pl.data.stdio_tests import (
    as_text,
    call_setup,
    call_test,
    function_expression,
    stdio_setup,
    stdio_test,
)
from infra_pl.data.traces import join_trace, problem_from_prompt, solution_text

__all__ = ["METAMATH_TYPES", "apps_tests", "infer_domain"]


def _final_answer(text: str) -> str | None:
    from infra_pl.eval.math_answer import extract_answer

    return extract_answer(text)


# ------------------------------------------------------------------------------- MetaMathQA

METAMATH_TYPES = (
    "GSM_AnsAug",
    "GSM_Rephrased",
    "GSM_SV",
    "GSM_FOBAR",
    "MATH_AnsAug",
    "MATH_Rephrased",
    "MATH_SV",
    "MATH_FOBAR",
)
_METAMATH_ANSWER = re.compile(r"The answer is:?\s*(.*?)\s*$", re.IGNORECASE | re.DOTALL)


@register("metamathqa")
def metamathqa(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """MetaMathQA: ``type`` is the category; the answer is the response's final "The answer is: X".

    Give the MATH training table (``problem``, ``level``) as ``difficulty_table`` to join
    MATH_* rows to their level through ``original_question``.
    """
    kind = require(row, "type")
    if kind not in METAMATH_TYPES:
        raise RowProblem("unknown type", f"field 'type' is {kind!r}; known: {', '.join(METAMATH_TYPES)}")
    query, response = require(row, "query"), require(row, "response")
    tail = response.strip().splitlines()[-1] if response.strip() else ""
    match = _METAMATH_ANSWER.search(tail)
    answer = match.group(1).rstrip(".").strip() if match else ""
    if not answer:
        raise RowProblem("empty answer", "field 'response' does not end with 'The answer is: <answer>'")
    return {
        "domain": "math",
        "category": kind,
        "messages": chat(ctx.system(SYSTEM_PRESETS["@short_math"]), query, response),
        "answer": answer,
        JOIN_KEY: row.get("original_question") if kind.startswith("MATH_") else None,  # GSM rows have no level
    }


# ---------------------------------------------------------------------------- Magicoder OSS


@register("magicoder", {"languages": None})
def magicoder(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """Magicoder-OSS-Instruct-75K: ``lang`` is the category; option ``languages`` keeps only those.

    Also reads Magicoder-Evol-Instruct-110K (``instruction``, ``response``, no ``lang``: category
    ``unspecified``), a larger code pool for the difficulty flip of the MetaMathQA recipe.
    """
    lang = str(row.get("lang") or "unspecified").strip().lower()
    keep = ctx.option("languages")
    if keep and lang not in {str(x).lower() for x in keep}:
        raise RowFiltered(f"language not in {sorted({str(x).lower() for x in keep})}")
    problem, solution = require(row, "problem", "instruction"), require(row, "solution", "response")
    return {
        "domain": "code",
        "category": lang,
        "messages": chat(ctx.system(SYSTEM_PRESETS["@short_code"]), problem, solution),
    }


# ------------------------------------------------------------ long CoT: Stratos / OpenThoughts

_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
# A coding prompt asks for a program or function, or specifies input/output formats.
_CODE_PROMPT = re.compile(
    r"executable Python function|Return the function body|\bstdin\b|standard input"
    r"|\b(?:write|implement|complete|create|generate)\s+(?:a|an|the)\s+(?:\w+\s+)?(?:program|function|class|script)\b"
    r"|-{3,}\s*Input\s*-{3,}|^\s*Input:?\s*$[\s\S]*^\s*Output:?\s*$|^\s*Input:[^\n]*\n\s*Output:"
    r"|\bclass Solution\b",
    re.IGNORECASE | re.MULTILINE,
)
_STDIN_PROMPT = re.compile(r"\bstdin\b|standard input|-{3,}\s*Input\s*-{3,}", re.IGNORECASE)


def infer_domain(prompt: str) -> str:
    """``code`` if the prompt asks for a program / function or has an input-output spec, else ``math``.

    Everything non-code counts as math, as in the paper's two-domain analysis (BS-17k's science
    and puzzle items are reasoning problems with a final answer).
    """
    return "code" if _CODE_PROMPT.search(prompt) else "math"


def _code_category(prompt: str) -> str:
    return "stdin" if _STDIN_PROMPT.search(prompt) else "call_based"


def _long_cot_example(messages: list[dict[str, str]], ctx: AdapterContext, category: str | None = None,
                      domain: str | None = None) -> dict[str, Any]:
    """Domain, category, answer and behaviour counts of a thought/solution conversation."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    assistant = messages[-1]["content"]
    forced = ctx.option("domain")
    domain = domain or (infer_domain(user) if forced == "infer" else forced)
    answer = _final_answer(solution_text(assistant)) if domain == "math" else None
    example: dict[str, Any] = {
        "domain": domain,
        "category": category or (_code_category(user) if domain == "code" else "math"),
        "messages": messages,
        "answer": answer,
        JOIN_KEY: problem_from_prompt(user),
    }
    if ctx.option("tag_behaviours"):
        example["behaviours"] = count_behaviours(assistant, answer)
    return example


def _row_difficulty(row: Mapping[str, Any], example: dict[str, Any]) -> None:
    """A level from the row's own ``difficulty`` field where the hub schema has one (OpenThoughts3-style
    integer ratings, TACO/APPS names), with its provenance; rows without one keep ``None``."""
    value = row.get("difficulty")
    if value in (None, ""):
        return
    from infra_pl.data.difficulty import parse_level

    try:
        level = parse_level(value)
    except ValueError as err:
        raise RowProblem("bad level", f"field 'difficulty': {err}") from None
    if level is not None:
        example["difficulty"] = level
        example["difficulty_source"] = f"{row.get('source') or 'row'}:difficulty"


def _conversation_messages(row: Mapping[str, Any], ctx: AdapterContext) -> list[dict[str, str]]:
    turns = require(row, "conversations")
    if not isinstance(turns, list):
        raise RowProblem("malformed conversations", f"field 'conversations' must be a list, got {type(turns).__name__}")
    messages: list[dict[str, str]] = []
    system = ctx.system(row.get("system") or None)
    if system:
        messages.append({"role": "system", "content": system})
    for k, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise RowProblem("malformed conversations", f"field 'conversations[{k}]' must be an object with 'from' and 'value'")
        role = _ROLES.get(str(turn["from"]).strip().lower())
        if role is None:
            raise RowProblem("unknown role", f"field 'conversations[{k}].from' is {turn['from']!r}; expected user or assistant")
        messages.append({"role": role, "content": str(turn["value"] or "")})
    roles = [m["role"] for m in messages]
    if "user" not in roles or not next(m for m in messages if m["role"] == "user")["content"].strip():
        raise RowProblem("missing conversation turn", "field 'conversations' has no (non-empty) user turn")
    if roles[-1] != "assistant" or not messages[-1]["content"].strip():
        raise RowProblem("missing conversation turn", "field 'conversations' does not end with a non-empty assistant turn")
    return messages


# Tagging long traces costs ~0.1 s each (see behaviours.annotate_behaviours): opt-in at load time.
_LONG_COT_OPTIONS = {"domain": "infer", "tag_behaviours": False}
_LONG_COT_CHOICES = {"domain": ("infer", "math", "code")}


@register("bespoke_stratos", _LONG_COT_OPTIONS, _LONG_COT_CHOICES)
def bespoke_stratos(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """Bespoke-Stratos-17k: ``system`` + ``conversations``; the domain is inferred from the prompt.

    Options: ``domain`` (``infer``/``math``/``code``), ``tag_behaviours`` (rule-tagger counts
    into ``behaviours``; off by default because it costs ~0.1 s per long trace).
    """
    example = _long_cot_example(_conversation_messages(row, ctx), ctx)
    _row_difficulty(row, example)
    return example


def apps_tests(raw: Any, starter_code: str | None, max_tests: int | None) -> tuple[list[str], str, str | None] | None:
    """APPS/TACO ``{"inputs", "outputs", "fn_name"?}`` -> (tests, setup code, entry point), or ``None``.

    Raises :class:`RowProblem` when the JSON is malformed.
    """
    if raw in (None, "", {}):
        return None
    try:
        spec = json.loads(raw) if isinstance(raw, str) else raw
        inputs, outputs = list(spec["inputs"]), list(spec["outputs"])
    except (TypeError, ValueError, KeyError) as err:
        raise RowProblem("malformed tests", f"field 'test_cases' is not APPS-style JSON with inputs/outputs ({err})") from None
    if len(inputs) != len(outputs):
        raise RowProblem("malformed tests", f"field 'test_cases' has {len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        return None
    pairs = list(zip(inputs, outputs))[: max_tests or None]
    name = spec.get("fn_name")
    if name:
        call = function_expression(str(name), starter_code)
        tests = [call_test(call, i if isinstance(i, list) else [i], o, wrapped=True) for i, o in pairs]
        return tests, call_setup(), str(name)
    texts = [(as_text(i), as_text(o)) for i, o in pairs]
    return [stdio_test(i, o) for i, o in texts], stdio_setup([i for i, _ in texts]), None


@register(
    "openthoughts",
    {**_LONG_COT_OPTIONS, "other_domains": "skip", "math_prompt": "{problem}", "code_prompt": "{problem}", "max_tests": None},
    {**_LONG_COT_CHOICES, "other_domains": ("skip", "math")},
)
def openthoughts(row: Mapping[str, Any], where: RowLocation, ctx: AdapterContext) -> dict[str, Any]:
    """OpenThoughts-114k, either config.

    ``default`` rows (``system``, ``conversations``) are read like Bespoke-Stratos. ``metadata``
    rows are rebuilt into the thought/solution layout from ``deepseek_reasoning`` and
    ``deepseek_solution``; ``domain`` gives the domain (others are left out, or counted as math
    with ``other_domains: math``), ``source`` the category, ``ground_truth_solution`` the math
    answer and ``test_cases`` (APPS-style JSON) the code tests. ``math_prompt`` / ``code_prompt``
    wrap the problem (``{problem}`` placeholder) to match the training prompts' format.
    """
    if "conversations" in row:
        return _long_cot_example(_conversation_messages(row, ctx), ctx)
    problem = require(row, "problem")
    reasoning, solution = require(row, "deepseek_reasoning"), require(row, "deepseek_solution")
    raw_domain = str(require(row, "domain")).strip().lower()
    if raw_domain in ("math", "code"):
        domain = raw_domain
    elif ctx.option("other_domains") == "math":
        domain = "math"
    else:
        raise RowFiltered(f"domain not math/code (other_domains: {ctx.option('other_domains')})")
    starter = row.get("starter_code") or ""
    template = ctx.option("math_prompt" if domain == "math" else "code_prompt")
    user = template.replace("{problem}", problem)
    if domain == "code" and starter.strip():
        user += f"\n\n{starter.rstrip()}"
    messages = chat(ctx.system(SYSTEM_PRESETS["@long_cot"]), user, join_trace(reasoning, solution))
    example = _long_cot_example(messages, ctx, category=str(row.get("source") or raw_domain), domain=domain)
    example[JOIN_KEY] = problem
    _row_difficulty(row, example)
    if domain == "math":
        truth = row.get("ground_truth_solution")
        example["answer"] = (_final_answer(truth) if truth else None) or example["answer"]
    else:
        built = apps_tests(row.get("test_cases"), starter, ctx.option("max_tests"))
        if built is not None:
            example["tests"], example["test_setup_code"], example["entry_point"] = built
    return example

