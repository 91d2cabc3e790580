"""write_report end to end on the fixture tables: files, escaping, embedded images, fallback label."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from infra_pl.report.aggregate import standard_tables
from infra_pl.report.content import build_content
from infra_pl.report.html import token_spans, write_report
from infra_pl.report.validate import ReportInputError

from .conftest import make_instance_df, make_measurement_info, make_sentence_df, make_token_df


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report for the module (rendering figures is the slow part)."""
    instance, sentences, tokens, info = make_instance_df(), make_sentence_df(), make_token_df(), make_measurement_info()
    tables = standard_tables(instance, sentences, n_boot=100, seed=0)
    out = tmp_path_factory.mktemp("report")
    html_path, md_path = write_report(out, instance, tokens, sentences, info, tables, top_k=3, title="Demo <report>")
    return out, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8"), tables


def test_files_are_written(report):
    out, _, _, tables = report
    assert (out / "report.html").exists() and (out / "report.md").exists()
    for name in tables:
        assert (out / "tables" / f"{name}.csv").exists() and (out / "tables" / f"{name}.json").exists()
    assert (out / "figure_score_distributions.png").exists()
    assert (out / "figure_tokens_math_1.png").exists()  # example f, top for math, has token scores


def test_html_is_self_contained_with_tables_and_images(report):
    _, html, _, tables = report
    assert html.startswith("<!DOCTYPE html>")
    assert "data:image/png;base64," in html
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<link" not in html and "<script" not in html
    for name in tables:
        assert f"<h3>{name} " in html or f"<h3>{name}<" in html
    assert "cross_domain" in html and "<table>" in html
    assert "about \u2212S(z)/N" in html and "N = 7" in html  # the sign convention header


def test_html_escapes_data_text(report):
    _, html, _, _ = report
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html  # a token
    assert "Wait, &lt;b&gt;another&lt;/b&gt; way." in html  # a sentence
    assert "1 &lt; 2 &amp; ok." in html
    assert "<title>Demo &lt;report&gt;</title>" in html


def test_html_token_heatmap_and_sentence_tables(report):
    _, html, _, _ = report
    assert 'class="top"' in html and 'title="score ' in html
    assert "removal score S(z) \u2212 S(z without sentence) (Eq. 7)" in html
    assert "token-sum approximation" in html
    assert "verification, exploration" in html  # behaviour labels of a sentence
    assert "additive approximation" in html


def test_reference_fallback_is_labelled_loudly(report):
    _, html, md, _ = report
    assert '<div class="warning">' in html and "REFERENCE FALLBACK for measurement &#x27;code&#x27;" in html
    assert "REFERENCE FALLBACK for measurement 'code'" in md
    assert "only 3 correctly answered" in html
    assert '<h3>Measurement: code <span class="flag">REFERENCE FALLBACK</span></h3>' in html
    assert "### Measurement: code **(REFERENCE FALLBACK)**" in md
    assert '<h3>Measurement: math</h3>' in html


def test_no_fallback_no_warning(tmp_path, instance_df):
    info = {m: {"n_available": 50, "n_used": 50, "fallback": None, "f_value": -1.0} for m in ("math", "code")}
    tables = {"cross_domain": standard_tables(instance_df, n_boot=20)["cross_domain"]}
    html_path, md_path = write_report(tmp_path, instance_df, None, None, info, tables, top_k=2)
    html = html_path.read_text(encoding="utf-8")
    assert "REFERENCE FALLBACK" not in html and '<div class="warning">' not in html
    assert "No token scores were provided" in html


def test_markdown_has_tables_and_links_to_existing_pngs(report):
    out, _, md, _ = report
    assert r"| domain | n | math\_mean \[CI\] |" in md  # the value and its CI in one cell
    links = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert "figure_score_distributions.png" in links and "figure_tokens_math_1.png" in links
    assert all((out / link).exists() for link in links)
    assert "<script" not in md and "<b>" not in md  # data text is HTML-escaped in Markdown too


def test_token_spans_escape_and_highlight():
    spans = token_spans(["<a>", " b", "\n"], [3.0, -1.0, 0.5])
    assert "&lt;a&gt;" in spans and "<a>" not in spans
    assert spans.count('class="top"') == 1 and "\u21b5\n" in spans


def test_write_report_validates_inputs(tmp_path, instance_df, token_df):
    with pytest.raises(ReportInputError, match="score"):
        write_report(tmp_path, instance_df.drop(columns=["score_math", "score_code"]), tables={})
    with pytest.raises(ReportInputError, match=r"token scores: missing required column\(s\) \['score'\]"):
        write_report(tmp_path, instance_df, token_df.drop(columns=["score"]), tables={})
    bad = instance_df.assign(score_math=instance_df["score_math"].where(instance_df["id"] != "c"))
    with pytest.raises(ReportInputError, match="1 of 7"):
        write_report(tmp_path, bad, tables={})


def test_content_top_examples_and_object_measurement_info(instance_df, token_df, sentence_df):
    info = {"math": SimpleNamespace(n_available=0, n_used=12, fallback="reference", f_value=-2.0)}
    content = build_content(instance_df, token_df, sentence_df, info, {}, top_k=2)
    assert [v.id for v in content.examples["math"]] == ["f", "d"]  # scores 5, 4
    assert [v.id for v in content.examples["code"]] == ["g", "d"]  # scores 4, 2
    top = content.examples["math"][0]
    assert top.has_tokens and len(top.tokens) == 11 and list(top.sentences["sentence_index"]) == [0, 1, 2, 3]
    assert content.warnings[0].startswith("REFERENCE FALLBACK for measurement 'math'")
    assert any("code" in w and "no measurement info" in w for w in content.warnings)
