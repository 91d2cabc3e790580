"""Token classes (Finding 4): hand-written traces with known classes, and shares that come out as built."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from infra_pl.report.token_classes import (
    CLASSES,
    TokenContext,
    classify_token,
    classify_tokens,
    token_class_table,
    token_contexts,
)
from infra_pl.report.validate import ReportInputError

FAST = {"n_boot": 200, "seed": 0}

# A math trace: connectors, words, digits, operators, punctuation (20 tokens).
MATH = [
    ("So", "connector"), (" we", "word"), (" add", "word"), (" 3", "number"), ("+", "math_symbol"),
    ("4", "number"), ("=", "math_symbol"), ("7", "number"), (".", "punctuation"), (" therefore", "connector"),
    (" the", "word"), (" sum", "word"), (" is", "word"), (" 7", "number"), (".", "punctuation"),
    (" Wait", "connector"), (",", "punctuation"), (" check", "connector"), (" it", "word"), (".", "punctuation"),
]
# A code trace: a markdown heading, a ```python fence, def, brackets, colon, indentation (18 tokens).
CODE = [
    ("###", "code_syntax"), (" Solution", "word"), ("\n", "whitespace"), ("```", "code_syntax"), ("python", "code_syntax"),
    ("\n", "whitespace"), ("def", "code_syntax"), (" f", "code_identifier"), ("(", "code_syntax"), ("x", "code_identifier"),
    ("):", "code_syntax"), ("\n    ", "code_syntax"), ("return", "code_syntax"), (" x", "code_identifier"),
    (" +", "code_syntax"), (" 1", "number"), ("\n", "code_syntax"), ("```", "code_syntax"),
]


def test_math_trace_classes():
    tokens, expected = zip(*MATH)
    assert classify_tokens(tokens) == list(expected)


def test_code_trace_classes():
    tokens, expected = zip(*CODE)
    assert classify_tokens(tokens) == list(expected)
    contexts = token_contexts(tokens)
    assert [c.in_code for c in contexts][6:17] == [True] * 11  # def ... the newline before the closing fence
    assert contexts[3].fence and contexts[4].fence and contexts[17].fence and not contexts[6].fence


def test_context_decides_brackets_keywords_and_split_words():
    # "(" is code syntax inside a fence, a math symbol in prose; "in" of "index" is not the keyword
    tokens = ["f", "(", "x", ")", " in", "dex", "\n", "```", "\n", "g", "(", "y", ")", " in", " z", "\n", "```"]
    classes = classify_tokens(tokens)
    assert classes[:6] == ["word", "math_symbol", "word", "math_symbol", "word", "word"]
    assert classes[9:15] == ["code_identifier", "code_syntax", "code_identifier", "code_syntax", "code_syntax", "code_identifier"]
    # a connector split by BPE is still a connector; a connector-looking piece inside a word is not
    assert classify_tokens([" There", "fore", ",", " al", "so", " but", "ton"]) == [
        "connector", "connector", "punctuation", "connector", "connector", "word", "word"]
    # code written in the prose (Figure 7's "def partitionDisjoint(self, ...)"), inline `code`, $math$
    assert classify_tokens([" we", " call", " solve", "(self", ")"]) == ["word", "word", "word", "code_syntax", "math_symbol"]
    assert classify_tokens([" so", " def"]) == ["connector", "code_syntax"]
    assert classify_tokens([" def", " solve", "(self", "):"]) == ["code_syntax", "code_identifier", "code_syntax", "code_syntax"]
    assert classify_tokens([" use", " `", "left", "_max", "`"]) == ["word", "code_syntax", "code_identifier", "code_identifier", "code_syntax"]
    assert classify_tokens([" so", " $", "x", "^", "2", "$", " costs", " $5", " and", " $10"]) == [
        "connector", "math_symbol", "math_symbol", "math_symbol", "number", "math_symbol", "word", "math_symbol", "word", "math_symbol"]


def test_special_markers_and_bpe_pieces():
    assert classify_tokens(["<|im_start|>", "<|", "begin", "_of", "_thought", "|>", "Okay", "<think>"]) == [
        "special", "special", "special", "special", "special", "special", "connector", "special"]
    assert classify_token("\u0120so") == "connector"  # Ġso (GPT-2 byte-level piece)
    assert classify_token("\u2581Therefore") == "connector"  # ▁Therefore (SentencePiece)
    assert classify_token("\u010a") == "whitespace"  # Ċ = newline
    assert classify_token("\u010a  ", TokenContext(in_code=True)) == "code_syntax"  # indentation inside code
    assert classify_token(" ", TokenContext(in_code=True)) == "whitespace"
    assert classify_token("") == "other" and classify_token(None) == "other" and classify_token(float("nan")) == "other"
    assert classify_token("\ufffd") == "other"  # half of a multi-byte character
    assert classify_token("\u2264") == "math_symbol" and classify_token("3.14") == "number"
    assert classify_token("Wait,") == "connector" and classify_token("'s") == "word"
    assert all(classify_token(t) in CLASSES for t in ["", "x", "##", "**", "\\frac", "\u4e2d\u6587", "\U0001f600"])


def _rows(example: str, measurement: str, tokens: list[str], scores: list[float]) -> list[dict]:
    return [{"id": example, "index": 0, "measurement": measurement, "position": p, "token": t, "score": s}
            for p, (t, s) in enumerate(zip(tokens, scores))]


MATH_SCORES = {"connector": 0.2, "word": -1.0, "number": 1.0, "math_symbol": 0.5, "punctuation": 0.0}
CODE_SCORES = {"code_syntax": 0.1, "code_identifier": -0.5, "number": 0.3, "whitespace": 0.0, "word": 0.0}


def _traces() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two math traces whose largest scores are on "So" and "therefore", two code traces whose
    largest are on "(" and "):"; the other tokens get a score per class (tables above)."""
    rows = []
    for example in ("m1", "m2"):
        tokens, classes = zip(*MATH)
        scores = [MATH_SCORES[c] for c in classes]
        scores[0], scores[9] = 5.0, 4.0  # So, therefore
        rows += _rows(example, "math", list(tokens), scores)
    for example in ("c1", "c2"):
        tokens, classes = zip(*CODE)
        scores = [CODE_SCORES[c] for c in classes]
        scores[8], scores[10] = 6.0, 5.0  # ( and ):
        rows += _rows(example, "math", list(tokens), scores)
    instance = pd.DataFrame({"id": ["m1", "m2", "c1", "c2", "unused"], "domain": ["math", "math", "code", "code", "math"]})
    return pd.DataFrame(rows), instance


def _cell(table: pd.DataFrame, domain: str, token_class: str, column: str) -> float:
    row = table[(table["domain"] == domain) & (table["token_class"] == token_class)]
    assert len(row) == 1, (domain, token_class)
    return float(row[column].iloc[0])


def test_shares_come_out_as_constructed():
    token_df, instance_df = _traces()
    table = token_class_table(token_df, instance_df, top_fraction=0.1, **FAST)  # 2 top tokens per trace
    assert list(dict.fromkeys(table["domain"])) == ["math", "code"]
    assert set(table["measurement"]) == {"math"} and (table["n_examples"] == 2).all()
    # every class observed anywhere has a row in both domains, in CLASSES order
    observed = [c for c in CLASSES if c in set(table["token_class"])]
    assert list(table[table["domain"] == "math"]["token_class"]) == observed
    # top tokens: the connectors in math, the code syntax markers in code
    assert _cell(table, "math", "connector", "share_top") == 1.0
    assert _cell(table, "code", "code_syntax", "share_top") == 1.0
    assert _cell(table, "math", "code_syntax", "share_top") == 0.0 and _cell(table, "code", "connector", "share_top") == 0.0
    assert _cell(table, "math", "connector", "n_top") == 4
    # base rates: 4 connectors, 6 words, 4 numbers of 20 tokens
    assert _cell(table, "math", "connector", "share_tokens") == pytest.approx(4 / 20)
    assert _cell(table, "math", "word", "share_tokens") == pytest.approx(6 / 20)
    assert _cell(table, "code", "code_syntax", "share_tokens") == pytest.approx(11 / 18)
    assert _cell(table, "math", "connector", "enrichment") == pytest.approx(5.0)
    # positive influence: connectors 5 + 4 + 0.2 + 0.2, numbers 4 x 1, math symbols 2 x 0.5, words negative
    assert _cell(table, "math", "connector", "share_positive_influence") == pytest.approx(9.4 / 14.4)
    assert _cell(table, "math", "number", "share_positive_influence") == pytest.approx(4 / 14.4)
    assert _cell(table, "math", "word", "share_positive_influence") == 0.0
    code_total = 6 + 5 + 9 * 0.1 + 0.3
    assert _cell(table, "code", "code_syntax", "share_positive_influence") == pytest.approx(11.9 / code_total)
    # identical traces: every resample gives the same share, the interval collapses onto it
    assert _cell(table, "math", "connector", "share_top_ci_low") == _cell(table, "math", "connector", "share_top_ci_high") == 1.0
    assert table.attrs["top_fraction"] == 0.1 and "each example" in table.attrs["top_rule"]


def test_interval_resamples_examples():
    token_df, instance_df = _traces()
    # m2's largest scores move to two numbers: pooled, half the math top tokens are connectors
    m2 = (token_df["id"] == "m2")
    token_df.loc[m2 & token_df["position"].isin([0, 9]), "score"] = 0.2
    token_df.loc[m2 & token_df["position"].isin([3, 5]), "score"] = 8.0
    table = token_class_table(token_df, instance_df, top_fraction=0.1, n_boot=400, seed=1)
    assert _cell(table, "math", "connector", "share_top") == pytest.approx(0.5)
    assert _cell(table, "math", "number", "share_top") == pytest.approx(0.5)
    # two examples: a resample holds m1 twice (1.0), m2 twice (0.0) or both (0.5)
    assert _cell(table, "math", "connector", "share_top_ci_low") == 0.0
    assert _cell(table, "math", "connector", "share_top_ci_high") == 1.0
    again = token_class_table(token_df, instance_df, top_fraction=0.1, n_boot=400, seed=1)
    pd.testing.assert_frame_equal(table, again)  # deterministic given the seed


def test_measurements_and_token_fixture(token_df, instance_df):
    table = token_class_table(token_df, instance_df, **FAST)
    assert list(dict.fromkeys(table["measurement"])) == ["math", "code"]
    # f is a code example (instance_df), measured on math; g a code example measured on code
    assert set(table["domain"]) == {"code"}
    math_rows = table[table["measurement"] == "math"]
    assert math_rows["share_tokens"].sum() == pytest.approx(1.0)
    assert math_rows["share_top"].sum() == pytest.approx(1.0)
    only_code = token_class_table(token_df, instance_df, measurements=["score_code"], **FAST)
    assert set(only_code["measurement"]) == {"code"}
    with pytest.raises(ReportInputError, match="no rows for measurement"):
        token_class_table(token_df, instance_df, measurements=["aime"], **FAST)


def test_bad_inputs_are_refused(token_df, instance_df):
    with pytest.raises(ReportInputError, match="not in the instance scores"):
        token_class_table(token_df, instance_df[instance_df["id"] != "g"], **FAST)
    duplicated = pd.concat([token_df, token_df.iloc[:1]])
    with pytest.raises(ReportInputError, match="duplicated positions"):
        token_class_table(duplicated, instance_df, **FAST)
    with pytest.raises(ReportInputError, match="NaN"):
        token_class_table(token_df.assign(score=np.nan), instance_df, **FAST)
    with pytest.raises(ValueError, match="top_fraction"):
        token_class_table(token_df, instance_df, top_fraction=0.0)
    with pytest.raises(ValueError, match="n_boot"):
        token_class_table(token_df, instance_df, n_boot=0)


def test_unfenced_code_written_in_the_prose():
    text = ("So in Python:\ndef partition(self, A: List[int]) -> int:\n    n = len(A)\n    for i in range(1, n):\n"
            "        m = max(m, A[i])\nThen x = 3, so if x > 2: done. Use left_max, not x_1.\n")
    tokens = re.findall(r"\n[ ]*|\s?\w+|[^\w\s]+|\s", text)
    assert "".join(tokens) == text
    classes = dict(zip(range(len(tokens)), classify_tokens(tokens)))
    by_token = {}
    for i, token in enumerate(tokens):
        by_token.setdefault(token, []).append(classes[i])
    assert by_token["def"] == ["code_syntax"] and by_token[" partition"] == ["code_identifier"]
    assert by_token["\n    "] == ["code_syntax", "code_syntax"] and by_token["\n        "] == ["code_syntax"]
    assert by_token[" range"] == ["code_identifier"] and by_token["):"] == ["code_syntax"]
    # the prose after the indented block is prose again: "=" and ">" are math, "so" a connector
    after = tokens.index("Then")
    assert list(zip(tokens, classify_tokens(tokens)))[after:after + 14] == [
        ("Then", "connector"), (" x", "word"), (" ", "whitespace"), ("=", "math_symbol"), (" 3", "number"),
        (",", "punctuation"), (" so", "connector"), (" if", "word"), (" x", "word"), (" ", "whitespace"),
        (">", "math_symbol"), (" 2", "number"), (":", "punctuation"), (" done", "word")]
    assert by_token[" left_max"] == ["code_identifier"] and by_token[" x_1"] == ["math_symbol"]
