"""The paper's LLM behaviour classifier (Appendix E), against any OpenAI-compatible endpoint.

Why offered next to the rule tagger: the paper counts behaviours with an instruction-tuned LLM
(Qwen-32B-Instruct) prompted once per behaviour; reproducing its Figure 6 (right) numbers needs
the same prompts. The endpoint is whatever the user runs or pays for (vLLM, llama.cpp server,
a hosted API): set ``base_url`` and ``model``, and the *name* of the environment variable that
holds the key, so the key itself never appears in a config file or a log.

Only the standard library is used (``urllib``): no client package is required to run the tagger.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from infra_pl.data.schema import BEHAVIOURS

__all__ = ["JUDGE_PROMPTS", "JudgeError", "LLMJudgeTagger", "parse_count"]

_FORMAT = (
    "{heading_hash} Task Format Format your response in markdown as follows:\n\n"
    "{heading_hash}{heading_hash} Thoughts [{thoughts}]\n\n"
    "{heading_hash}{heading_hash} {question} [yes/no]\n\n"
    "{heading_hash}{heading_hash} {number} <count> [1/2/...] </count>\n\n"
)

# Appendix E prompts as printed in the paper (Figures 10 and 11), with `{response}` where the
# trace goes. Two deliberate corrections in the exploration prompt, where the printed text was
# copied from the backtracking prompt: it asks to count "exploration" (printed: "backtracking")
# instances, and "does not explore" (printed: "does not exploration"). The paper does not print
# its subgoal-setting prompt; ours follows the same structure.
JUDGE_PROMPTS: dict[str, str] = {
    "exploration": (
        "#Task Description You will be provided with text from the internet. Evaluate whether the text "
        'contains any "searching for another approach after reaching correct answers" behavior, where the '
        "writer reaches a correct or satisfactory solution, but then explicitly continues to explore alternate "
        "methods or perspectives. This is a type of cognitive behavior that reflects intellectual curiosity or "
        "seeking multiple strategies even after solving the problem.\n\n"
        "This is not the same as: - Backtracking, where the writer changes method because the current one does "
        "not work or is incomplete. - Verification, where the writer checks the correctness of a method without "
        "attempting a different one.\n\n"
        'Examples of this behavior include: - "But let me just think again if there\'s another way to approach '
        'this." - "Another way to look at this is..." - "That\'s one way to get the result. Now let\'s see if we '
        'can also derive it using geometry." - "Alternatively, maybe there\'s a different way to approach the '
        'problem?"\n\n'
        "Count the number of distinct exploration instances and provide the count between the tags <count> "
        "</count>. If the writer does not explore, please provide a count of 0 as <count>0</count>.\n\n"
        "#Task Format Format your response in markdown as follows:\n\n"
        "##Thoughts [Brief description describing what behavior was noticed and where exploration occurred]\n\n"
        "##Does exploration thinking? [yes/no]\n\n"
        "##Number of exploration thinking steps <count> [1/2/...] </count>\n\n"
        "#Task to evaluate for exploration {response}\n\n"
        "#Response"
    ),
    "verification": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any verification steps. We want to mark instances where the writer explicitly checks their "
        "own work, such as by comparing the result to a known value or by checking the result of a "
        "calculation.\n\n"
        'Verification steps in mathematics might look like: - "Let\'s check our answer by substituting $x = 3$ '
        'back into the original equation." - "To verify this is correct, I\'ll differentiate the antiderivative '
        'and confirm it matches the original function." - "Let\'s test our formula with a simple case: when '
        '$n = 1$, we get $f(1) = 2$, which matches our expected result." - "To ensure this solution is valid, '
        'I\'ll check if it satisfies all the given constraints."\n\n'
        "If you find any verification steps, please count them and provide the count between the tags <count> "
        "</count>. If the text does not contain any verification steps, please provide a count of 0 as "
        "<count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description describing what behavior was noticed and where answer verification may have occurred",
            question="Does verification?",
            number="Number of answer verification steps",
        )
        + "# Task to evaluate for Verification {response}\n\n# Response"
    ),
    "backtracking": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any backtracking behavior, where the writer realizes a path won't work and explicitly goes "
        'back to try a different approach. An example of backtracking is: "Let me try again", "Wait", "I made '
        'a mistake", or "we need to try a different sequence of operations". We want to mark instances where '
        "the writer abandons a thought and backtracks to a previous computation.\n\n"
        'Backtracking in mathematics might look like: - "I started with the wrong formula. Let\'s use '
        'integration by parts instead." - "This approach leads to a contradiction. Going back to the original '
        'equation..." - "I see the error in my calculation. Let\'s recalculate using..." - "This algebraic '
        'manipulation isn\'t simplifying as expected. Let\'s try factoring differently."\n\n'
        "Count the number of distinct backtracking instances and provide the count between the tags <count> "
        "</count>. If the writer does not backtrack, please provide a count of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description describing what behavior was noticed and where backtracking occurred",
            question="Does backtrack?",
            number="Number of backtrack steps",
        )
        + "# Task to evaluate for backtracking {response}\n\n# Response"
    ),
    "backward_chaining": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any backward-chaining behavior, where the writer is working towards a goal but starts from "
        "the goal and works backward.\n\n"
        'Backward-chaining in mathematics might look like: - "To solve this equation, let\'s start with what '
        "we want to prove: $x = 4$. Working backward, if $x = 4$, then $x^2 - 5x + 4 = 0$ must be true. Let's "
        'verify this." - "If we want to find a function whose derivative is $2x + 3$, let\'s start with the '
        "desired result and work backward. The derivative of $x^2 + 3x + C$ would give us $2x + 3$.\" - \"To "
        "prove this triangle is a right triangle, I'll start by assuming the Pythagorean theorem holds "
        '($c^2 = a^2 + b^2$) and check if our side lengths satisfy this condition." - "In this optimization '
        "problem, we know the maximum value occurs when the derivative equals zero. If we set $f'(x) = 0$ and "
        'solve for $x$, we can find our critical points." - "To determine the initial velocity, I know the '
        "ball reaches a height of 20 meters. Working backward from this final state using the kinematic "
        'equation $h = vt - 0.5gt^2$, I can solve for the initial velocity $v$."\n\n'
        "Count the number of distinct backward-chaining instances and provide the count between the tags "
        "<count> </count>. If the reasoning does not contain any backward-chaining behavior, provide a count "
        "of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description of the observed behavior and where backward chaining may have occurred",
            question="Does the text exhibit backward chaining?",
            number="Number of backward chaining instances",
        )
        + "# Task to evaluate for backward chaining {response}\n\n# Response"
    ),
    "subgoal_setting": (
        "# Task Description You will be provided with text from the internet. Evaluate whether the text "
        "contains any explicit subgoal setting, where the writer breaks the problem into smaller, intermediate "
        "goals, or announces the next step they are going to take before taking it.\n\n"
        'Subgoal setting in mathematics might look like: - "First, I\'ll find a common denominator, and then I '
        'can add the two fractions." - "Let\'s split this into two cases: $n$ even and $n$ odd." - "To find the '
        'area, I need the height first, so let me compute the height." - "The plan is: factor the polynomial, '
        'then check which roots lie in the interval."\n\n'
        "Count the number of distinct subgoal-setting instances and provide the count between the tags "
        "<count> </count>. If the text does not set any subgoals, provide a count of 0 as <count>0</count>.\n\n"
        + _FORMAT.format(
            heading_hash="#",
            thoughts="Brief description of the observed behavior and where subgoals were set",
            question="Does the text set subgoals?",
            number="Number of subgoal-setting instances",
        )
        + "# Task to evaluate for subgoal setting {response}\n\n# Response"
    ),
}

_COUNT_RE = re.compile(r"<count>\s*(\d+)\s*</count>", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge endpoint failed or answered without a parseable count."""


def parse_count(reply: str) -> int | None:
    """The last ``<count>N</count>`` in a reply (templates echoing ``[1/2/...]`` are ignored)."""
    matches = _COUNT_RE.findall(reply)
    return int(matches[-1]) if matches else None


@dataclass
class LLMJudgeTagger:
    """Counts behaviours in a trace by asking a chat-completions endpoint, one prompt per behaviour.

    Args:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (``/chat/completions`` is appended).
        model: model name the endpoint expects (the paper used Qwen-32B-Instruct).
        api_key_env: name of the environment variable holding the API key; ``None`` sends no key
            (local servers).
        timeout_s: per-request timeout.
        temperature, max_tokens: sampling settings sent with each request.
        retries: extra attempts after a connection error, HTTP 429 or 5xx (exponential backoff).
        backoff_s: first backoff delay.
        use_env_proxy: honour ``http(s)_proxy`` variables; turn off for endpoints on this machine.
        prompts: behaviour -> prompt template with a ``{response}`` placeholder.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 1024
    retries: int = 2
    backoff_s: float = 1.0
    use_env_proxy: bool = True
    prompts: Mapping[str, str] = field(default_factory=lambda: dict(JUDGE_PROMPTS))

    def __post_init__(self) -> None:
        missing = [b for b in BEHAVIOURS if b not in self.prompts]
        if missing:
            raise ValueError(f"LLMJudgeTagger has no prompt for {missing}")
        bad = [b for b, p in self.prompts.items() if "{response}" not in p]
        if bad:
            raise ValueError(f"judge prompt(s) for {bad} lack the '{{response}}' placeholder")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def prompt(self, behaviour: str, text: str) -> str:
        """The filled prompt (plain replacement: traces are full of braces)."""
        if behaviour not in self.prompts:
            raise ValueError(f"unknown behaviour {behaviour!r}; choose from {tuple(self.prompts)}")
        return self.prompts[behaviour].replace("{response}", text)

    def count(self, text: str, behaviour: str) -> int:
        """The judge's count of ``behaviour`` in ``text``; :class:`JudgeError` if it gives none."""
        reply = self.complete(self.prompt(behaviour, text))
        value = parse_count(reply)
        if value is None:
            snippet = reply[-300:].replace("\n", " ")
            raise JudgeError(f"{self.url}: no <count>N</count> in the {behaviour} reply (model {self.model}): ...{snippet}")
        return value

    def count_all(self, text: str, behaviours: Sequence[str] = BEHAVIOURS) -> dict[str, int]:
        """Counts for every behaviour, in the schema's ``behaviours`` shape."""
        return {b: self.count(text, b) for b in behaviours}

    # ---------------------------------------------------------------- transport
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise JudgeError(
                    f"environment variable {self.api_key_env} (api_key_env) is not set; "
                    "export the API key there, or set api_key_env: null for a server without keys"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, prompt: str) -> str:
        """One chat completion: the assistant message content."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        body = self._post(payload)
        try:
            return str(body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.url}: unexpected response shape {json.dumps(body)[:300]}") from None

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(payload).encode("utf-8")
        handlers = [] if self.use_env_proxy else [urllib.request.ProxyHandler({})]
        opener = urllib.request.build_opener(*handlers)
        last: str = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
            try:
                with opener.open(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:300]
                last = f"HTTP {err.code}: {detail}"
                if err.code != 429 and err.code < 500:
                    break  # a client error will not fix itself
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
            except json.JSONDecodeError as err:
                raise JudgeError(f"{self.url}: response is not JSON ({err.msg})") from None
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise JudgeError(f"{self.url}: request failed after {attempt + 1} attempt(s): {last}")
