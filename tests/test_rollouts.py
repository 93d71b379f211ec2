"""The transformers rollout backend: n samples per prompt with audio, log-probs, suppressed input tokens."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from audiorl.data.audio import AudioStore
from audiorl.data.synth import tone
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.rl.config import RolloutConfig
from audiorl.rollouts import ROLLOUT_BACKENDS, RolloutRequest, SamplingParams, build_rollout_engine

from tests.test_model import messages


@pytest.fixture(scope="module")
def setup(tiny_lm):
    rng = np.random.default_rng(1)
    store = AudioStore()
    waves = [tone(250.0, 1.0, rng), tone(1800.0, 0.8, rng)]
    clips = [store.add_array(w) for w in waves]
    embedder = AudioEmbedder(tiny_lm, store)
    engine = build_rollout_engine("hf", tiny_lm, embedder, RolloutConfig(batch_size=16))
    requests = [RolloutRequest(tiny_lm.prompt_ids(messages(1), [c]), [c], n=5) for c in clips]
    return tiny_lm, store, embedder, engine, requests, waves


def test_backends_are_registered_lazily():
    assert "hf" in ROLLOUT_BACKENDS.names()


def test_n_completions_per_request_with_text_and_logprobs(setup):
    lm, _, _, engine, requests, _ = setup
    torch.manual_seed(0)
    results = engine.generate(requests, SamplingParams(max_new_tokens=10, temperature=1.0))
    assert [len(r) for r in results] == [5, 5]
    for completion in results[0] + results[1]:
        assert 1 <= len(completion.token_ids) <= 10
        assert len(completion.logprobs) == len(completion.token_ids)
        assert all(lp <= 0.0 for lp in completion.logprobs)
        assert completion.text == lm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
        assert completion.finished == (completion.token_ids[-1] in lm.eos_token_ids)


def test_greedy_equals_the_native_audio_generate(setup):
    lm, _, _, engine, requests, waves = setup
    results = engine.generate(requests, SamplingParams(max_new_tokens=12, temperature=0.0))
    for request, wave, completions in zip(requests, waves, results):
        inputs = lm.processor(text=lm.render(messages(1)), audio=[wave], return_tensors="pt")
        with torch.no_grad():
            native = lm.model.generate(
                **inputs, max_new_tokens=12, do_sample=False, suppress_tokens=lm.special_input_token_ids,
                eos_token_id=lm.eos_token_ids, pad_token_id=lm.tokenizer.pad_token_id,
            )
        native_ids = native[0, inputs["input_ids"].shape[1] :].tolist()
        stop = next((i + 1 for i, t in enumerate(native_ids) if t in lm.eos_token_ids), len(native_ids))
        assert all(c.token_ids == native_ids[:stop] for c in completions)


def test_logprobs_match_a_recomputed_forward(setup):
    lm, _, embedder, engine, requests, _ = setup
    temperature = 0.7
    torch.manual_seed(1)
    completion = engine.generate(requests[:1], SamplingParams(max_new_tokens=8, temperature=temperature))[0][0]
    ids = torch.tensor([requests[0].prompt_ids + completion.token_ids])
    with torch.no_grad():
        embeds = embedder.inputs_embeds(lm.model, ids, [requests[0].clips])
        logits = lm.model(inputs_embeds=embeds).logits[0, len(requests[0].prompt_ids) - 1 : -1] / temperature
    logits[:, lm.special_input_token_ids] = -float("inf")
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(completion.logprobs), expected, atol=1e-4)


def test_audio_placeholder_is_never_sampled(setup):
    lm, store, _, _, requests, _ = setup
    tampered = copy.copy(lm)
    tampered.model = copy.deepcopy(lm.model)
    with torch.no_grad():  # make the placeholder the most likely next token everywhere
        tampered.model.lm_head.weight[lm.audio_placeholder_id] = tampered.model.lm_head.weight.sum(0) * 5
    engine = build_rollout_engine("hf", tampered, AudioEmbedder(tampered, store))
    torch.manual_seed(0)
    results = engine.generate(requests, SamplingParams(max_new_tokens=16, temperature=1.0))
    sampled = {t for r in results for c in r for t in c.token_ids}
    assert not sampled & set(lm.special_input_token_ids)
    # control: unsuppressed, the tampered model does emit the placeholder
    inputs = lm.processor(text=lm.render(messages(1)), audio=[store.wave(requests[0].clips[0])], return_tensors="pt")
    with torch.no_grad():
        free = tampered.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert lm.audio_placeholder_id in free[0, inputs["input_ids"].shape[1] :].tolist()


def test_each_unique_clip_is_encoded_once_per_generate(tiny_lm):
    rng = np.random.default_rng(2)
    store = AudioStore()
    clips = [store.add_array(tone(400.0 + 300 * i, 1.0, rng)) for i in range(3)]
    embedder = AudioEmbedder(tiny_lm, store)
    engine = build_rollout_engine("hf", tiny_lm, embedder, RolloutConfig(batch_size=4))  # several generate chunks
    requests = [RolloutRequest(tiny_lm.prompt_ids(messages(1), [c]), [c], n=4) for c in clips]
    engine.generate(requests, SamplingParams(max_new_tokens=4))
    assert embedder.stats["clips_encoded"] == 3  # 12 samples, 3 clips
    calls = embedder.stats["encoder_calls"]
    engine.generate(requests, SamplingParams(max_new_tokens=4))
    assert embedder.stats["clips_encoded"] == 3 and embedder.stats["encoder_calls"] == calls  # cached
