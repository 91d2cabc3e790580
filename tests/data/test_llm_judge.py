"""The Appendix E LLM judge against a stub chat-completions server on 127.0.0.1 (no other network).

Counts (the paper's prompts) and sentence-level labels (numbered sentences), batched runs with a
cache that makes reruns resume, timeouts and counted failures, and Cohen's kappa.
"""

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra_pl.data.behaviours import evaluate_tagger
from infra_pl.data.llm_judge import (
    JUDGE_PROMPTS,
    SENTENCE_PROMPTS,
    JudgeError,
    LLMJudgeTagger,
    cohen_kappa,
    number_sentences,
    parse_count,
    parse_sentence_numbers,
)
from infra_pl.data.schema import BEHAVIOURS
from infra_pl.data.sentences import split_sentences

# What the stub "model" answers per behaviour, recognised by each prompt's task line.
REPLIES = {
    "#Task to evaluate for exploration": "## Thoughts The writer explores.\n##Does exploration thinking? yes\n##Number of exploration thinking steps <count> 2 </count>",
    "# Task to evaluate for Verification": "## Does verification? yes\n## Number of answer verification steps <count>1</count>",
    "# Task to evaluate for backtracking": "## Does backtrack? no\n## Number of backtrack steps <count>0</count>",
    "# Task to evaluate for backward chaining": "## Number of backward chaining instances <count> 3 </count>",
    "# Task to evaluate for subgoal setting": "## Number of subgoal-setting instances <count>4</count>",
}


# Sentence-level stub "model": recognises the behaviour by its description and answers the numbers
# of the numbered sentences containing that behaviour's keyword.
SENTENCE_BEHAVIOUR = (  # checked in order: the exploration description mentions the other two
    ("searching for another approach", "exploration"),
    ("contains any verification steps", "verification"),
    ("contains any backtracking behavior", "backtracking"),
    ("contains any backward-chaining behavior", "backward_chaining"),
    ("contains any explicit subgoal setting", "subgoal_setting"),
)
KEYWORDS = {"verification": "check", "exploration": "Alternatively", "backtracking": "Oops",
            "backward_chaining": "backward", "subgoal_setting": "First"}


def sentence_reply(prompt):
    behaviour = next(b for marker, b in SENTENCE_BEHAVIOUR if marker in prompt)
    text = prompt.split("# Text to evaluate ", 1)[1].rsplit("\n\n# Response", 1)[0]
    pieces = re.split(r"\[(\d+)\] ", text)[1:]  # number, sentence, number, sentence, ...
    numbers = [int(n) for n, sentence in zip(pieces[::2], pieces[1::2]) if KEYWORDS[behaviour] in sentence.split("```")[0]]
    if StubHandler.mode == "out_of_range":
        numbers.append(999)
    # echo the template first, as chatty models do; the parser must take the real answer
    return ("## Sentences <sentences> [numbers, comma-separated, or nothing] </sentences>\n"
            f"## Thoughts ...\n## Sentences <sentences>{', '.join(map(str, numbers))}</sentences>")


class StubHandler(BaseHTTPRequestHandler):
    requests: list = []
    mode = "ok"
    in_flight = 0
    max_in_flight = 0
    delay_s = 0.0
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StubHandler.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if StubHandler.mode == "fail":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        prompt = body["messages"][0]["content"]
        if "FAILME" in prompt and StubHandler.mode == "fail_marked":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        with StubHandler.lock:
            StubHandler.in_flight += 1
            StubHandler.max_in_flight = max(StubHandler.max_in_flight, StubHandler.in_flight)
        try:
            time.sleep(1.0 if "SLOWME" in prompt else StubHandler.delay_s)
        finally:
            with StubHandler.lock:
                StubHandler.in_flight -= 1
        if StubHandler.mode == "no_count":
            content = "I am not sure."
        elif "# Text to evaluate " in prompt:
            content = sentence_reply(prompt)
        else:
            content = next(r for key, r in REPLIES.items() if key in prompt)
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture()
def server():
    StubHandler.requests, StubHandler.mode, StubHandler.delay_s, StubHandler.max_in_flight = [], "ok", 0.0, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _judge(url, **kwargs):
    return LLMJudgeTagger(base_url=url, model="qwen-32b-instruct", use_env_proxy=False, backoff_s=0.01, **kwargs)


TRACE = "Okay, 3 + 4 = 7 {with braces}. Let me check: 7 - 4 = 3. Alternatively, count up."


def test_counts_every_behaviour_with_the_paper_prompts(server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = _judge(server, api_key_env="JUDGE_KEY")
    counts = judge.count_all(TRACE)
    assert counts == {"verification": 1, "exploration": 2, "backtracking": 0, "subgoal_setting": 4, "backward_chaining": 3}
    assert len(StubHandler.requests) == len(BEHAVIOURS)
    first = StubHandler.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    assert first["body"]["model"] == "qwen-32b-instruct" and first["body"]["temperature"] == 0.0
    prompt = first["body"]["messages"][0]["content"]
    assert prompt.startswith("# Task Description You will be provided with text from the internet.")
    assert prompt.endswith(f"# Task to evaluate for Verification {TRACE}\n\n# Response")  # braces survive


def test_prompts_follow_appendix_e():
    assert set(JUDGE_PROMPTS) == set(BEHAVIOURS)
    assert "Alternatively, maybe there's a different way to approach the problem?" in JUDGE_PROMPTS["exploration"]
    assert "I see the error in my calculation. Let's recalculate using..." in JUDGE_PROMPTS["backtracking"]
    assert "Working backward from this final state" in JUDGE_PROMPTS["backward_chaining"]
    assert all(p.count("{response}") == 1 and "<count>0</count>" in p for p in JUDGE_PROMPTS.values())


def test_parse_count_takes_the_last_number_tag():
    assert parse_count("## Number <count> [1/2/...] </count> ... <count> 5 </count>") == 5
    assert parse_count("no tags") is None


def test_missing_count_server_error_and_missing_key(server, monkeypatch):
    judge = _judge(server, api_key_env=None, retries=1)
    StubHandler.mode = "no_count"
    with pytest.raises(JudgeError, match=r"no <count>N</count> in the verification reply.*I am not sure"):
        judge.count(TRACE, "verification")
    assert StubHandler.requests[-1]["auth"] is None  # api_key_env=None sends no key
    StubHandler.mode, StubHandler.requests = "fail", []
    with pytest.raises(JudgeError, match=r"failed after 2 attempt\(s\): HTTP 503: overloaded"):
        judge.count(TRACE, "exploration")
    assert len(StubHandler.requests) == 2  # one retry
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="environment variable OPENAI_API_KEY"):
        _judge(server).count(TRACE, "verification")
    with pytest.raises(ValueError, match="unknown behaviour"):
        judge.prompt("daydreaming", TRACE)


def _trace(thought, solution="The answer is 4."):
    return f"<|begin_of_thought|>\n\n{thought}\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>"


TRACES = [
    _trace("First, add 2 and 2. That gives 4. Let me check: 4 - 2 = 2. Alternatively, double 2.", "First, check it. Alternatively, 4."),
    _trace("Oops, I misread the question. Working backward from 10, the start was 5.\n\n```python\nprint(5)  # check\n```\n\nDone."),
    "No thought markers here. First, a plan. Then a check.",
]


def _labels_by_text(text, labels):
    return {s.text: found for s, found in zip(split_sentences(text), labels)}


def test_numbered_sentences_cover_the_thought_prose_only():
    numbered, indices = number_sentences(TRACES[1])
    sentences = split_sentences(TRACES[1])
    assert numbered.startswith("[1] Oops, I misread the question. [2] Working backward from 10, the start was 5.")
    assert "```python\nprint(5)  # check\n```\n\n[3] Done." in numbered  # code kept, not numbered
    assert [sentences[i].text for i in indices] == ["Oops, I misread the question.", "Working backward from 10, the start was 5.", "Done."]
    assert "The answer" not in numbered  # the solution is not the reasoning
    assert all("{response}" in p and ("Examples" in p or "might look like" in p) for p in SENTENCE_PROMPTS.values())


def test_sentence_labels_from_the_stub_judge(server):
    StubHandler.delay_s = 0.05
    judge = _judge(server, api_key_env=None, concurrency=4)
    run = judge.label_many(TRACES)
    assert run.ok and run.requests == run.sent == 3 * len(BEHAVIOURS) and run.cached == 0
    first = _labels_by_text(TRACES[0], run.labels[0])
    assert first["First, add 2 and 2."] == {"subgoal_setting"}
    assert first["Let me check: 4 - 2 = 2."] == {"verification"}
    assert first["Alternatively, double 2."] == {"exploration"}
    assert first["That gives 4."] == set()
    assert first["First, check it."] == set() and first["<|begin_of_thought|>"] == set()  # solution / markers
    second = _labels_by_text(TRACES[1], run.labels[1])
    assert second["Oops, I misread the question."] == {"backtracking"}
    assert second["Working backward from 10, the start was 5."] == {"backward_chaining"}
    assert second["```python\nprint(5)  # check\n```"] == set()  # code is context only
    third = _labels_by_text(TRACES[2], run.labels[2])  # no markers: the whole text is the reasoning
    assert third["First, a plan."] == {"subgoal_setting"} and third["Then a check."] == {"verification"}
    assert StubHandler.max_in_flight > 1  # requests were batched concurrently
    assert judge.name == "llm_judge:qwen-32b-instruct" and len(judge.cache_key) == 16
    prompt = StubHandler.requests[0]["body"]["messages"][0]["content"]
    assert "[1] " in prompt and "<sentences>" in prompt
    # the judge is a tagger: tag() has RuleTagger.tag's shape, so evaluate_tagger scores it
    record = {"id": "t", "conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": TRACES[0]}],
              "sentence_labels": [{"text": s.text, "behaviours": sorted(f)} for s, f in judge.tag(TRACES[0])]}
    metrics = evaluate_tagger([record], judge)
    assert all(m.fp == m.fn == 0 for m in metrics.values()) and metrics["verification"].tp == 1


def test_cache_hits_and_resume_after_partial_failure(server, tmp_path):
    texts = [TRACES[0], _trace("FAILME First, this one fails. Let me check."), TRACES[2]]
    judge = _judge(server, api_key_env=None, retries=0, cache_dir=tmp_path / "cache")
    StubHandler.mode = "fail_marked"
    run = judge.label_many(texts)
    assert not run.ok and run.failed_traces == [1] and run.labels[1] is None
    assert run.failure_counts() == {"http_503": len(BEHAVIOURS)}
    assert run.labels[0] is not None and run.labels[2] is not None
    assert "5 failed (http_503 5); 1 trace(s) without labels: 1; rerun to retry them" in run.summary()
    with pytest.raises(JudgeError, match="judge run incomplete"):
        run.raise_for_failures()
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 2 * len(BEHAVIOURS)  # failures are not cached

    StubHandler.mode, StubHandler.requests = "ok", []
    resumed = judge.label_many(texts)  # only the failed trace is asked again
    assert resumed.ok and resumed.sent == len(BEHAVIOURS) and resumed.cached == 2 * len(BEHAVIOURS)
    assert all("FAILME" in r["body"]["messages"][0]["content"] for r in StubHandler.requests)
    assert resumed.labels[0] == run.labels[0] and resumed.labels[2] == run.labels[2]
    assert _labels_by_text(texts[1], resumed.labels[1])["Let me check."] == {"verification"}

    StubHandler.requests = []
    again = judge.label_many(texts)
    assert again.sent == 0 and again.cached == 3 * len(BEHAVIOURS) and not StubHandler.requests
    assert again.labels == resumed.labels
    other_model = LLMJudgeTagger(base_url=server, model="another-model", api_key_env=None, use_env_proxy=False,
                                 cache_dir=tmp_path / "cache")
    assert other_model.label_many(texts[:1]).sent == len(BEHAVIOURS)  # the model is part of the key
    # a torn cache file is asked again, not trusted
    victim = next((tmp_path / "cache").rglob("*.json"))
    victim.write_text("{not json")
    assert judge.label_many(texts).sent == 1


def test_timeouts_and_unparseable_replies_are_counted(server):
    judge = _judge(server, api_key_env=None, retries=0, timeout_s=0.3)
    run = judge.label_many([TRACES[0], _trace("SLOWME First, wait.")], behaviours=["verification"])
    assert run.failure_counts() == {"timeout": 1} and run.failed_traces == [1]
    assert "timed out after 0.3 s" in run.failures[0].error
    StubHandler.mode = "no_count"
    run = judge.label_many([TRACES[0]], behaviours=["exploration", "verification"])
    assert run.failure_counts() == {"unparseable": 2} and run.labels == [None]
    StubHandler.mode = "out_of_range"
    run = judge.label_many([TRACES[2]], behaviours=["verification"])
    assert run.ok and run.dropped_numbers == 1 and "1 out-of-range sentence number(s) ignored" in run.summary()


def test_count_many_is_cached_too(server, tmp_path):
    judge = _judge(server, api_key_env=None, cache_dir=tmp_path)
    run = judge.count_many([TRACE, TRACE + " More."])
    assert run.ok and run.sent == 2 * len(BEHAVIOURS)
    assert run.counts[0] == {"verification": 1, "exploration": 2, "backtracking": 0, "subgoal_setting": 4, "backward_chaining": 3}
    again = judge.count_many([TRACE])
    assert again.sent == 0 and again.cached == len(BEHAVIOURS) and again.counts[0] == run.counts[0]


def test_parse_sentence_numbers():
    template = "## Sentences <sentences> [numbers, comma-separated, or nothing] </sentences>"
    assert parse_sentence_numbers(template + " then <sentences> 2, 7,5 </sentences>") == [2, 5, 7]
    assert parse_sentence_numbers("<sentences>[3] [4]</sentences>") == [3, 4]
    assert parse_sentence_numbers("<sentences></sentences>") == [] == parse_sentence_numbers("<sentences>None</sentences>")
    assert parse_sentence_numbers("no tags") is None and parse_sentence_numbers(template) is None


def test_cohen_kappa():
    a = [{"verification"}, {"verification"}, set(), set()]
    b = [{"verification"}, set(), set(), set()]
    kappa = cohen_kappa(a, b)
    assert kappa["verification"] == pytest.approx(0.5)  # p_o = 3/4, p_e = 1/2
    assert kappa["exploration"] == 1.0  # both never say it: full agreement
    assert cohen_kappa([set()], [{"exploration"}])["exploration"] == 0.0  # chance 0: (0 - 0) / 1
    assert math.isnan(cohen_kappa([], [])["verification"])  # no sentences: undefined
    assert cohen_kappa([{"backtracking"}, set()], [set(), {"backtracking"}])["backtracking"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same sentences"):
        cohen_kappa([set()], [])


def test_judge_tags_a_training_set_for_attribution_batched_cached_and_compared_with_rules(server, tmp_path):
    """The attribution path (infra_pl.data.tagging) with the judge: one batched label_many per chunk,
    resumable through its cache, kappa against the rules, and a failed trace stops the run loudly."""
    from infra_pl.data.tagging import agreement, resolve_tagger, tag_examples

    StubHandler.delay_s = 0.02
    examples = [{"id": str(k), "answer": None, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": t}]}
                for k, t in enumerate(TRACES)]
    judge = _judge(server, api_key_env=None, concurrency=4, cache_dir=str(tmp_path / "judge"))
    tagged = tag_examples(examples, judge, tmp_path / "tags.jsonl")
    assert StubHandler.max_in_flight > 1  # traces of a chunk were asked for together
    assert tagged[0].counts()["exploration"] == 1 and tagged[1].counts()["backward_chaining"] == 1
    sent = len(StubHandler.requests)
    assert tag_examples(examples, judge, tmp_path / "tags.jsonl") == tagged and len(StubHandler.requests) == sent
    kappa = agreement(tagged, tag_examples(examples, resolve_tagger("rules")))
    assert set(kappa) == set(BEHAVIOURS) and all(-1.0 <= k <= 1.0 for k in kappa.values())
    failing = [*examples, {"id": "f", "answer": None, "messages": [{"role": "user", "content": "q"},
               {"role": "assistant", "content": _trace("FAILME First, a plan.")}]}]
    StubHandler.mode = "fail_marked"
    with pytest.raises(Exception, match="503|fail"):
        tag_examples(failing, judge, tmp_path / "tags2.jsonl")
