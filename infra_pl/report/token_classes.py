"""Token classes of the most influential tokens, math vs code traces (paper §4.4, Finding 4).

Finding 4 reads Figure 7 as: in math CoTs the top tokens are natural-language logical connectors
("Wait", "However", "Therefore"), in code CoTs they are syntax and structure (fences, headings,
``def (self, A: List[int]) -> int:``). This module turns that reading into a measured table:

* :func:`classify_token` - the class of one token piece (the one place where the connector and
  keyword lists live: :data:`CONNECTORS`, :data:`CODE_KEYWORDS`, :data:`CODE_ONLY_WORDS`).
* :func:`token_contexts` / :func:`classify_tokens` - the context of each piece computed from the
  whole token sequence of one example: inside a fenced code block or an inline code span, on a
  fence line, inside ``$...$`` math, part of a chat/thought marker, and the whole word a BPE piece
  belongs to (``"There" + "fore"`` is one connector).
* :func:`token_class_table` - per measurement and training domain, each class's share of the top
  tokens, of all tokens (the base rate) and of the total positive influence, with bootstrap CIs
  that resample examples.

Classes (:data:`CLASSES`): ``connector`` (logical connectors and discourse markers), ``word``
(other natural-language words), ``number``, ``math_symbol`` (operators, brackets and letters
outside code, LaTeX commands, anything inside ``$...$``), ``code_syntax`` (inside code: brackets,
colons, operators, keywords, indentation and newline runs; anywhere: markdown fences, backticks,
headings, bold markers, and words that only code uses such as ``def``/``self``/``elif``),
``code_identifier`` (names inside code that are not keywords), ``punctuation`` (sentence
punctuation outside code), ``whitespace`` (outside code, or a single space inside code),
``special`` (template and thought markers such as ``<|im_start|>``, ``<|begin_of_thought|>``,
``<think>``) and ``other`` (empty pieces, partial UTF-8 bytes, emoji).

Pieces: decoded tokens (``" so"``) and raw BPE pieces (``"Ġso"``, ``"▁so"``, ``"Ċ"``) are both
accepted; the markers are mapped back to the space, newline and tab they stand for.

Limits (rules, not a parser): code outside fences is recognised only from a clear header line
(:data:`UNFENCED_CODE_HEADER`) and the lines indented below it, so a lone ``n = len(A)`` in the
prose reads as math; comments and strings inside code count as code identifiers; ``$`` pairs follow
pandoc's rule, which a trace about prices can still fool. The tests pin these cases down.
"""

from __future__ import annotations

import keyword
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from infra_pl.report.bootstrap import resample_blocks
from infra_pl.report.tokens import TOKEN_COLUMNS, top_token_mask
from infra_pl.report.validate import ReportInputError, require_columns, require_finite

__all__ = [
    "CLASSES",
    "CODE_KEYWORDS",
    "CODE_ONLY_WORDS",
    "CONNECTORS",
    "TokenContext",
    "UNFENCED_CODE_HEADER",
    "classify_token",
    "classify_tokens",
    "normalise_piece",
    "token_class_table",
    "token_contexts",
]

CLASSES = (
    "connector",
    "word",
    "number",
    "math_symbol",
    "code_syntax",
    "code_identifier",
    "punctuation",
    "whitespace",
    "special",
    "other",
)

# --------------------------------------------------------------------------- the editable lists

#: Logical connectors and discourse markers of reasoning (lower case, whole words). The paper
#: names "Wait", "However", "Verify", "Hence", "First", "Therefore", "Alternatively" and the
#: opener "Okay, so I"; the rest are their usual companions. Deliberately absent: "and", "or",
#: "if" (too frequent to mark a reasoning move; they would swamp the class's base rate).
CONNECTORS = frozenset({
    "so", "therefore", "thus", "hence", "consequently", "accordingly",
    "wait", "but", "however", "although", "though", "yet", "whereas", "nevertheless", "nonetheless",
    "alternatively", "instead", "otherwise", "conversely", "rather",
    "because", "since",
    "then", "first", "firstly", "second", "secondly", "third", "thirdly", "next", "finally", "lastly",
    "also", "moreover", "furthermore", "additionally", "similarly", "likewise", "meanwhile",
    "actually", "indeed", "anyway", "now", "maybe", "perhaps",
    "verify", "check", "let",
    "okay", "ok", "alright", "hmm", "oh",
})

#: Keywords that are code syntax inside code (Python keywords and soft keywords, plus the common
#: ones of C-family languages, JavaScript, Rust, Go, Java and shell). Case-sensitive.
CODE_KEYWORDS = frozenset(keyword.kwlist) | frozenset(getattr(keyword, "softkwlist", ())) | frozenset({
    "self", "cls", "int", "float", "str", "bool", "list", "dict", "set", "tuple", "List", "Dict", "Optional",
    "function", "const", "let", "var", "void", "char", "long", "double", "unsigned", "signed", "auto",
    "struct", "enum", "union", "typedef", "public", "private", "protected", "static", "final", "new",
    "this", "null", "nullptr", "undefined", "true", "false", "switch", "case", "default", "do", "goto",
    "include", "define", "using", "namespace", "template", "typename", "std", "fn", "mut", "impl", "pub",
    "use", "mod", "func", "package", "interface", "extends", "implements", "throws", "throw", "catch",
    "echo", "fi", "done", "esac", "then", "elif",
})

#: Words that are code syntax even outside a fenced block: reasoning traces often write code
#: inline in the prose ("So in Python: def partitionDisjoint(self, A: List[int]) -> int:").
#: Only words English prose does not use; "for", "if", "return", "class", "None", "True" stay
#: words outside code ("None of these", "True, but ...").
CODE_ONLY_WORDS = frozenset({
    "def", "elif", "lambda", "nonlocal", "self", "__init__", "__name__",
    "printf", "println", "cout", "cin", "endl", "std", "nullptr", "const", "void", "func", "fn",
})

#: Lines outside fences that start code written straight into the prose (long-CoT traces often
#: do): a ``def``/``class`` header, an import, an ``#include``, or a control-flow header with a
#: bracket or comparison that ends in a colon. The header line and every line indented below it
#: count as code. Deliberately narrow: "x = 3" alone stays math, "If so:" stays prose.
UNFENCED_CODE_HEADER = re.compile(
    r"[ \t]*(?:def\s+\w+\s*\(|class\s+\w+\s*[(:]|import\s+\w|from\s+[\w.]+\s+import\s|#include\s*[<\"]"
    r"|(?:for|while|if|elif|with)\b[^\n]*[()\[\]=<>][^\n]*:\s*$|(?:else|try|finally)\s*:\s*$)"
)

# --------------------------------------------------------------------------- patterns

_MARKERS = str.maketrans({"\u0120": " ", "\u2581": " ", "\u010a": "\n", "\u0109": "\t"})  # Ġ ▁ Ċ ĉ
_SPECIAL = re.compile(
    r"<\|[A-Za-z0-9_.:\- ]{1,48}\|>"  # <|im_start|>, <|begin_of_thought|>, <|eot_id|>, <|endoftext|>
    r"|</?(?:think|thinking|answer|reasoning|s)>"  # <think>, </s>
    r"|\[/?INST\]|<(?:bos|eos|pad|unk)>"
)
_FENCE_LINE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_MATH_SPANS = (
    re.compile(r"\$\$.+?\$\$", re.DOTALL),
    re.compile(r"\\\[.+?\\\]", re.DOTALL),
    re.compile(r"\\\(.+?\\\)", re.DOTALL),
    re.compile(r"(?<![\\$])\$(?!\s)[^$\n]+?(?<!\s)\$(?!\d)"),  # pandoc's rule: "$5 and $10" is money
)
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"['\u2019]?[^\W\d_]+(?:['\u2019][^\W\d_]*)?")  # words, "'s", "n't"
_TEXT_WORD = re.compile(r"[^\W\d]\w*")  # a word or identifier in the joined text ("Therefore", "left_max")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?(?:\d[\d,_]*(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?%?|\d+[A-Za-z]{0,2}")
_HEADING = re.compile(r"#{1,6}")
_MARKUP = frozenset({"```", "``", "`", "~~~", "**", "__", "***", "---"})
_PUNCTUATION = frozenset(".,;:!?'\"\u2018\u2019\u201c\u201d\u2026\u2014\u2013")
_MATH_CHARS = frozenset("+-*/=<>^_|\\{}[]()%~$&") | frozenset(
    "\u2264\u2265\u2260\u2248\u00d7\u00f7\u00b7\u2211\u220f\u222b\u221a\u03c0\u221e\u00b1\u2208\u2209\u2282"
    "\u222a\u2229\u2192\u2190\u21d2\u21d4\u00b0\u2032\u2261\u2200\u2203\u2202\u2207\u2218"
)


def normalise_piece(text: Any) -> str:
    """A token piece as plain text: ``None``/NaN -> ``""``, BPE markers -> space/newline/tab."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    return str(text).translate(_MARKERS)


@dataclass(frozen=True)
class TokenContext:
    """Where a piece sits in its example (computed by :func:`token_contexts`)."""

    in_code: bool = False  # inside a fenced code block or an inline `code` span
    fence: bool = False  # on a ``` / ~~~ fence line (the fence and its language tag) or an inline backtick
    in_math: bool = False  # inside $...$, $$...$$, \(...\), \[...\], or part of a \command
    special: bool = False  # part of a chat/thought marker, even when the tokenizer split it
    word: str | None = None  # the whole word the piece belongs to ("Therefore" for "fore")


def _is_number(core: str) -> bool:
    return bool(_NUMBER.fullmatch(core)) or (core.isdigit())


def _has_math(core: str) -> bool:
    return any(ch in _MATH_CHARS or unicodedata.category(ch) == "Sm" for ch in core)


def classify_token(text: Any, context: TokenContext | None = None) -> str:
    """The class (one of :data:`CLASSES`) of one token piece.

    Without ``context`` the piece is judged alone, as if it were prose outside code and math; pass
    the :class:`TokenContext` from :func:`token_contexts` to tell ``(`` in code (``code_syntax``)
    from ``(`` in an equation (``math_symbol``) and to recognise connectors split into pieces.
    """
    ctx = context or TokenContext()
    piece = normalise_piece(text)
    core = piece.strip()
    if ctx.special or (core and _SPECIAL.fullmatch(core)):
        return "special"
    if piece == "":
        return "other"
    if not core:  # whitespace only
        if ctx.in_code and ("\n" in piece or "\t" in piece or "  " in piece):
            return "code_syntax"  # indentation and line structure of code
        return "whitespace"
    if ctx.fence or core in _MARKUP or set(core) <= {"`"} or _FENCE_LINE.match(core):
        return "code_syntax"
    if ctx.in_code:
        if _is_number(core):
            return "number"
        if _IDENT.fullmatch(core):
            # judged on the whole name: "in" of "index" is not the keyword "in"
            return "code_syntax" if (ctx.word or core) in CODE_KEYWORDS else "code_identifier"
        if _WORD.fullmatch(core):
            return "code_identifier"  # non-ASCII names and strings
        return "code_syntax"  # brackets, colons, operators, comment markers, mixed pieces like "):"
    if _HEADING.fullmatch(core):
        return "code_syntax"  # markdown heading ("### Solution")
    if _is_number(core):
        return "number"
    if _WORD.fullmatch(core) or (_IDENT.fullmatch(core) and (ctx.word or core) in CODE_ONLY_WORDS):
        word = ctx.word or core  # the whole word: "fore" of "Therefore", "self" of "itself"
        if word in CODE_ONLY_WORDS:
            return "code_syntax"
        if ctx.in_math:
            return "math_symbol"  # variables and LaTeX command names
        return "connector" if word.lower() in CONNECTORS else "word"
    if any(name in CODE_ONLY_WORDS for name in _IDENT.findall(core)):
        return "code_syntax"  # "(self" of code written in the prose
    if _IDENT.fullmatch(core) and all(len(part) > 1 for part in core.strip("_").split("_")) and "_" in core.strip("_"):
        return "code_identifier"  # a snake_case name mentioned in the prose ("left_max"), not x_1
    if _has_math(core) or ctx.in_math:
        return "math_symbol"
    if all(ch in _PUNCTUATION for ch in core):
        return "punctuation"
    if _WORD.match(core) and all(ch in _PUNCTUATION for ch in core[_WORD.match(core).end():]):
        return classify_token(core[: _WORD.match(core).end()], ctx)  # "Wait," decoded as one piece
    return "other"


def _mask(length: int, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(length + 1, dtype=bool)
    for start, stop in spans:
        mask[start:stop] = True
    return mask


def token_contexts(tokens: Sequence[Any]) -> list[TokenContext]:
    """The :class:`TokenContext` of each piece of one example (tokens in position order).

    The pieces are joined into the example's text; code blocks are the lines between ``` (or ~~~)
    fence lines (an unclosed fence runs to the end: the trace was cut), plus unfenced code (a line
    matching :data:`UNFENCED_CODE_HEADER` and the lines indented below it); inline code is text
    between single backticks on one line outside blocks. A piece counts as inside code or math when its
    first non-space character is; it is on a fence or part of a marker when any character is.
    """
    pieces = [normalise_piece(t) for t in tokens]
    starts = np.cumsum([0] + [len(p) for p in pieces])
    text = "".join(pieces)
    n = len(text)

    code_spans, fence_spans = [], []
    offset, open_at, header_indent = 0, None, None
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        if _FENCE_LINE.match(body):
            fence_spans.append((offset, offset + len(body)))
            header_indent = None
            if open_at is None:
                open_at = offset + len(line)
            else:
                code_spans.append((open_at, offset))
                open_at = None
        elif open_at is None and body.strip():
            # unfenced code: a header line and the lines indented below it
            indent = len(body.expandtabs(4)) - len(body.expandtabs(4).lstrip())
            if header_indent is not None and indent > header_indent:
                code_spans.append((offset, offset + len(line)))
            elif UNFENCED_CODE_HEADER.match(body):
                code_spans.append((offset, offset + len(line)))
                header_indent = indent
            else:
                header_indent = None
        offset += len(line)
    if open_at is not None:
        code_spans.append((open_at, n))
    in_block = _mask(n, code_spans) | _mask(n, fence_spans)
    for match in _INLINE_CODE.finditer(text):
        if not in_block[match.start():match.end()].any():
            code_spans.append((match.start(1), match.end(1)))
            fence_spans.extend([(match.start(), match.start(1)), (match.end(1), match.end())])
    code = _mask(n, code_spans)
    fence = _mask(n, fence_spans)
    special = _mask(n, [m.span() for m in _SPECIAL.finditer(text)])
    math_spans = [m.span() for pattern in _MATH_SPANS for m in pattern.finditer(text)]
    math_spans += [m.span() for m in _LATEX_COMMAND.finditer(text)]
    in_math = _mask(n, math_spans) & ~code
    word_at = np.full(n + 1, -1, dtype=np.int64)
    words: list[str] = []
    for match in _TEXT_WORD.finditer(text):
        word_at[match.start():match.end()] = len(words)
        words.append(match.group())

    # per piece, vectorised: its first non-space character, and prefix sums to ask "any character
    # of the piece in this mask" in O(1)
    begin, end = starts[:-1], starts[1:]
    lead = np.array([len(p) - len(p.lstrip()) for p in pieces], dtype=np.int64)
    first = np.where(lead < end - begin, begin + lead, begin)
    space = np.array([ch.isspace() for ch in text], dtype=bool) if n else np.zeros(0, dtype=bool)

    def any_in(mask: np.ndarray) -> np.ndarray:
        prefix = np.concatenate([[0], np.cumsum(mask[:n], dtype=np.int64)])
        return prefix[end] > prefix[begin]

    on_fence = any_in(fence[:n] & ~space)
    on_special = any_in(special[:n])
    code_first, math_first, word_first = code[first], in_math[first], word_at[first]
    contexts = []
    for i in range(len(pieces)):
        if begin[i] == end[i]:
            contexts.append(TokenContext())
            continue
        contexts.append(TokenContext(
            in_code=bool(code_first[i]),
            fence=bool(on_fence[i]),
            in_math=bool(math_first[i]),
            special=bool(on_special[i]),
            word=words[word_first[i]] if word_first[i] >= 0 else None,
        ))
    return contexts


def classify_tokens(tokens: Sequence[Any], classify: Callable[[Any, TokenContext], str] = classify_token) -> list[str]:
    """Class of every piece of one example, each judged in its context (tokens in position order)."""
    return [classify(t, c) for t, c in zip(tokens, token_contexts(tokens))]


# --------------------------------------------------------------------------- the table


_TABLE_COLUMNS = [
    "measurement", "domain", "token_class", "n_examples", "n_tokens", "n_top",
    "share_tokens", "share_tokens_ci_low", "share_tokens_ci_high",
    "share_top", "share_top_ci_low", "share_top_ci_high",
    "share_positive_influence", "share_positive_influence_ci_low", "share_positive_influence_ci_high",
    "enrichment",
]


def _domains(token_df: pd.DataFrame, instance_df: pd.DataFrame) -> dict[str, Any]:
    require_columns(instance_df, ["id", "domain"], "instance scores")
    lookup = dict(zip(instance_df["id"].astype(str), instance_df["domain"]))
    missing = sorted(set(token_df["id"].astype(str)) - set(lookup))
    if missing:
        raise ReportInputError(
            f"token scores: {len(missing)} example id(s) are not in the instance scores (first: {', '.join(missing[:3])}); "
            "pass the instance scores of the same attribution run"
        )
    return lookup


def _ratio_ci(counts: np.ndarray, boot: list[np.ndarray], tail: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pooled share per class (ratio of sums over examples) and its percentile interval."""
    total = counts.sum()
    point = counts.sum(axis=0) / total if total > 0 else np.full(counts.shape[1], np.nan)
    if not boot:
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    sums = np.concatenate(boot, axis=0)  # (n_boot, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = sums / sums.sum(axis=1, keepdims=True)
    valid = np.isfinite(shares).all(axis=1)
    if not valid.any():
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    low, high = np.quantile(shares[valid], [tail, 1.0 - tail], axis=0)
    return point, low, high


def token_class_table(
    token_df: pd.DataFrame,
    instance_df: pd.DataFrame,
    top_fraction: float = 0.05,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    measurements: Sequence[str] | None = None,
    classify: Callable[[Any, TokenContext], str] = classify_token,
) -> pd.DataFrame:
    """Per measurement, training domain (math vs code traces) and token class: how much of the top
    tokens, of all tokens and of the positive influence the class holds, with bootstrap CIs.

    Which tokens are "top": the top ``top_fraction`` of each example's own tokens, among positive
    ones (:func:`~infra_pl.report.tokens.top_token_mask`), exactly the tokens the heatmaps and the
    HTML report box in bold. Per example rather than pooled because scores of different examples
    differ in scale by orders of magnitude (the top examples are the tails of Fig. 2): a pooled cut
    would be the tokens of the two or three largest examples, not what Figure 7 highlights.

    Columns: ``measurement``, ``domain`` (of the training example, from ``instance_df`` by id),
    ``token_class``, ``n_examples``, ``n_tokens`` / ``n_top`` (tokens of the class, all / top),
    ``share_tokens`` (the base rate: the class's share of all tokens), ``share_top`` (share of the
    top tokens), ``share_positive_influence`` (the class's sum of positive token scores over the
    sum of all positive token scores), each with ``_ci_low``/``_ci_high``, and ``enrichment`` =
    share_top / share_tokens (> 1: the class is over-represented among the top tokens).

    Shares are pooled over the examples of a group (ratio of sums: "of all highlighted tokens in
    math traces, x% are connectors"), so a long trace counts with its length and the positive
    influence share with each example's positive mass. Intervals are percentile-bootstrap intervals
    that resample whole examples (tokens of one trace are not independent), seeded per group like
    :func:`~infra_pl.report.bootstrap.describe`. Every class observed anywhere gets a row in every
    group (share 0 where absent), so bars line up. ``attrs`` records ``top_fraction``, ``n_boot``,
    ``ci`` and the per-example top-token rule.
    """
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be strictly between 0 and 1, got {ci!r}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    require_columns(token_df, TOKEN_COLUMNS, "token scores")
    require_finite(token_df, ["score"], "token scores")
    if measurements is not None:
        wanted = [measurements] if isinstance(measurements, str) else list(measurements)
        wanted = [m.removeprefix("score_") for m in wanted]
        absent = sorted(set(wanted) - set(token_df["measurement"].astype(str)))
        if absent:
            raise ReportInputError(f"token scores: no rows for measurement(s) {absent}")
        token_df = token_df[token_df["measurement"].astype(str).isin(wanted)]
    lookup = _domains(token_df, instance_df)

    per_example: list[dict[str, Any]] = []
    cache: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    frame = token_df.assign(_id=token_df["id"].astype(str), _m=token_df["measurement"].astype(str))
    for (example_id, measurement), rows in frame.groupby(["_id", "_m"], sort=False):
        rows = rows.sort_values("position", kind="stable")
        if rows["position"].duplicated().any():
            raise ReportInputError(f"token scores: example '{example_id}', measurement '{measurement}' has duplicated positions")
        tokens = tuple(rows["token"].tolist())
        cached = cache.get(example_id)
        if cached is None or cached[0] != tokens:
            cached = (tokens, classify_tokens(tokens, classify))
            cache[example_id] = cached
        scores = rows["score"].to_numpy(dtype=float)
        per_example.append({
            "measurement": measurement, "domain": lookup[example_id], "classes": np.asarray(cached[1], dtype=object),
            "scores": scores, "top": top_token_mask(scores, top_fraction) if len(scores) else np.zeros(0, dtype=bool),
        })

    unknown = sorted({c for e in per_example for c in e["classes"]} - set(CLASSES))
    classes = [c for c in CLASSES if any((e["classes"] == c).any() for e in per_example)] + unknown
    index = {c: k for k, c in enumerate(classes)}
    tail = (1.0 - ci) / 2.0
    rows_out: list[dict[str, Any]] = []
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for e in per_example:
        key = (e["measurement"], "n/a" if pd.isna(e["domain"]) else e["domain"])
        groups.setdefault(key, []).append(e)
    measurement_order = {m: i for i, m in enumerate(dict.fromkeys(e["measurement"] for e in per_example))}
    domain_order = {("n/a" if pd.isna(d) else d): i for i, d in enumerate(dict.fromkeys(instance_df["domain"]))}
    ordered = sorted(groups.items(), key=lambda kv: (measurement_order[kv[0][0]], domain_order.get(kv[0][1], len(domain_order))))
    for (measurement, domain), examples in ordered:
        E, K = len(examples), len(classes)
        all_counts, top_counts, positive = np.zeros((E, K)), np.zeros((E, K)), np.zeros((E, K))
        for i, e in enumerate(examples):
            codes = np.array([index[c] for c in e["classes"]], dtype=np.int64)
            all_counts[i] = np.bincount(codes, minlength=K)
            top_counts[i] = np.bincount(codes[e["top"]], minlength=K)
            positive[i] = np.bincount(codes, weights=np.clip(e["scores"], 0.0, None), minlength=K)
        boots: dict[str, list[np.ndarray]] = {"all": [], "top": [], "pos": []}
        rng = np.random.default_rng(seed)
        for idx in resample_blocks(E, n_boot, rng, max_elements=1_000_000):
            # multiplicity of each example in each resample, then one matrix product per table
            rows = idx.shape[0]
            flat = (idx + (np.arange(rows, dtype=np.int64) * E)[:, None]).ravel()
            weights = np.bincount(flat, minlength=rows * E).reshape(rows, E).astype(float)
            boots["all"].append(weights @ all_counts)
            boots["top"].append(weights @ top_counts)
            boots["pos"].append(weights @ positive)
        share_all = _ratio_ci(all_counts, boots["all"], tail)
        share_top = _ratio_ci(top_counts, boots["top"], tail)
        share_pos = _ratio_ci(positive, boots["pos"], tail)
        for k, name in enumerate(classes):
            base = share_all[0][k]
            rows_out.append({
                "measurement": measurement, "domain": domain, "token_class": name, "n_examples": E,
                "n_tokens": int(all_counts[:, k].sum()), "n_top": int(top_counts[:, k].sum()),
                "share_tokens": base, "share_tokens_ci_low": share_all[1][k], "share_tokens_ci_high": share_all[2][k],
                "share_top": share_top[0][k], "share_top_ci_low": share_top[1][k], "share_top_ci_high": share_top[2][k],
                "share_positive_influence": share_pos[0][k], "share_positive_influence_ci_low": share_pos[1][k],
                "share_positive_influence_ci_high": share_pos[2][k],
                "enrichment": share_top[0][k] / base if base > 0 else math.nan,
            })
    table = pd.DataFrame(rows_out, columns=_TABLE_COLUMNS)
    table.attrs.update({
        "top_fraction": top_fraction, "n_boot": n_boot, "ci": ci,
        "top_rule": f"top {top_fraction:.0%} of each example's tokens among positive ones (as boxed in the heatmaps)",
    })
    return table
