"""The Appendix E LLM judge against a stub chat-completions server on 127.0.0.1 (no other network)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra_pl.data.llm_judge import JUDGE_PROMPTS, JudgeError, LLMJudgeTagger, parse_count
from infra_pl.data.schema import BEHAVIOURS

# What the stub "model" answers per behaviour, recognised by each prompt's task line.
REPLIES = {
    "#Task to evaluate for exploration": "## Thoughts The writer explores.\n##Does exploration thinking? yes\n##Number of exploration thinking steps <count> 2 </count>",
    "# Task to evaluate for Verification": "## Does verification? yes\n## Number of answer verification steps <count>1</count>",
    "# Task to evaluate for backtracking": "## Does backtrack? no\n## Number of backtrack steps <count>0</count>",
    "# Task to evaluate for backward chaining": "## Number of backward chaining instances <count> 3 </count>",
    "# Task to evaluate for subgoal setting": "## Number of subgoal-setting instances <count>4</count>",
}


class StubHandler(BaseHTTPRequestHandler):
    requests: list = []
    mode = "ok"

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
        content = "I am not sure." if StubHandler.mode == "no_count" else next(r for key, r in REPLIES.items() if key in prompt)
        payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture()
def server():
    StubHandler.requests, StubHandler.mode = [], "ok"
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
