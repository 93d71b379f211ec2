"""Colocated vLLM rollouts vs transformers on the tiny model, in a process of its own (vLLM binds the
process's threads on CPU, so it stays out of the pytest process).

``python vllm_scenarios.py MODEL_DIR DATA_DIR`` prints one JSON object of measurements that
tests/test_vllm_rollouts.py asserts on.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def trainer_prompt_logprobs(lm, embedder, request):
    """The trainer's log-prob of each prompt token after the first (what vLLM's ``prompt_logprobs`` report)."""
    import torch

    full = torch.tensor([request.prompt_ids])
    with torch.no_grad():
        audio = embedder.audio_embeds(lm.model, list(request.clips))
        inputs = lm.forward_inputs(lm.model, full, torch.ones_like(full), audio)
        hidden = lm.language_model(lm.model)(**inputs, use_cache=False).last_hidden_state
        logp = torch.log_softmax(lm.output_head(lm.model)(hidden)[0, :-1].float(), -1)
    return logp.gather(-1, full[0, 1:, None])[:, 0]


def main() -> None:
    model_dir, data_dir = sys.argv[1], sys.argv[2]
    import torch
    from audiorl.data.audio import AudioStore
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rl.config import RolloutConfig
    from audiorl.rl.prompts import PromptEncoder
    from audiorl.rollouts import SamplingParams
    from audiorl.rollouts.hf import HFRolloutEngine
    from audiorl.rollouts.vllm_colocated import VLLMColocatedEngine
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lm = load_audio_lm(model_dir)
    for name, p in lm.model.named_parameters():
        if ".experts." in name:  # MoE experts stay frozen with vLLM on CPU (Qwen3OmniLM.engine_state_dict)
            p.requires_grad_(False)
    store = AudioStore()
    embedder = AudioEmbedder(lm, store)
    encoder = PromptEncoder(lm, store)
    rows = [json.loads(line) for line in open(os.path.join(data_dir, "eval.jsonl"))][:6]
    requests = [
        encoder.request([{"role": "user", "content": [
            {"type": "audio", "audio": os.path.join(data_dir, r["audio"])}, {"type": "text", "text": r["prompt"]},
        ]}])
        for r in rows
    ]
    hf = HFRolloutEngine(lm, embedder)
    vllm = VLLMColocatedEngine(lm, embedder, RolloutConfig(), seed=0)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    out: dict = {}

    def ids(engine):
        return [c[0].token_ids for c in engine.generate(requests, greedy)]

    def compare(name):
        embedder.weights_changed()  # as the trainer does after a step (a trainable tower's outputs are versioned)
        vllm.update_weights(lm.model)
        a, b = ids(hf), ids(vllm)
        out[name] = {"hf": a, "vllm": b, "tensors_synced": vllm.sync.last_tensors}

    compare("initial")
    with torch.no_grad():  # a full-weight update: every language-model weight moves
        for name, p in lm.language_model(lm.model).named_parameters():
            if ".experts." in name:  # MoE experts: frozen with vLLM rollouts on CPU (Qwen3OmniLM.engine_state_dict)
                continue
            p.add_(torch.randn_like(p) * 0.02)
    compare("full_update")
    lm.model = get_peft_model(
        lm.model, LoraConfig(
            r=8, lora_alpha=16, target_modules=lm.lora_target_regex, exclude_modules=lm.lora_exclude_regex,
            modules_to_save=[lm.projector_module],
        )
    )
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    compare("lora_first_sync")
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    compare("lora_incremental_sync")

    # Sampled-token log-probs: vLLM's against the trainer's forward (teacher-forced, same temperature).
    for temperature in (1.0, 0.7):
        params = SamplingParams(max_new_tokens=16, temperature=temperature)
        sampled = vllm.generate([r.__class__(r.prompt_ids, r.clips, 4) for r in requests[:3]], params)
        worst, n_tokens = 0.0, 0
        model = lm.model
        for request, group in zip(requests, sampled):
            for c in group:
                full = torch.tensor([request.prompt_ids + c.token_ids])
                with torch.no_grad():  # through the family hook (Omni: multimodal rotary positions)
                    audio = embedder.audio_embeds(model, list(request.clips))
                    inputs = lm.forward_inputs(model, full, torch.ones_like(full), audio)
                    hidden = lm.language_model(model)(**inputs, use_cache=False).last_hidden_state
                    logits = lm.output_head(model)(hidden)[0, len(request.prompt_ids) - 1 : -1].float()
                logp = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
                worst = max(worst, (logp - torch.tensor(c.logprobs)).abs().max().item())
                n_tokens += len(c.token_ids)
        out[f"logprob_max_abs_diff_t{temperature}"] = worst
        out[f"logprob_tokens_t{temperature}"] = n_tokens

    # Prompt log-probs (prefill): vLLM's against the trainer's forward of the same prompt and audio. The decode
    # gap above is larger (vLLM's CPU decode path); the prefill one shows the audio and positions are the same.
    from vllm import SamplingParams as VLLMSamplingParams

    worst = 0.0
    for request in requests[:3]:
        prompt = vllm_prompt(store, request)
        ids = vllm.worker.collapse(prompt)  # one placeholder per clip, as the worker sends it
        scored = vllm.worker.llm.generate(
            [{"prompt_token_ids": ids, "multi_modal_data": {"audio": (prompt.waves[0], 16000)}}],
            VLLMSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False,
        )[0].prompt_logprobs
        ours = trainer_prompt_logprobs(lm, embedder, request)
        theirs = torch.tensor([next(iter(d.values())).logprob for d in scored[1:]])
        worst = max(worst, (ours - theirs).abs().max().item())
    out["prompt_logprob_max_abs_diff"] = worst

    # Seeds: the same call index gives the same samples; the audio placeholder is never sampled.
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    twice = [vllm.worker.generate(
        [vllm_prompt(store, r) for r in requests[:2]], params, call=7) for _ in range(2)]
    out["seeded_repeat_equal"] = [[c.token_ids for c in g] for g in twice[0]] == [[c.token_ids for c in g] for g in twice[1]]
    many = vllm.generate([r.__class__(r.prompt_ids, r.clips, 8) for r in requests], params)
    special = set(lm.special_input_token_ids)
    out["sampled_special_tokens"] = sum(t in special for g in many for c in g for t in c.token_ids)
    out["distinct_samples_in_group"] = min(len({tuple(c.token_ids) for c in g}) for g in many)
    print("RESULT " + json.dumps(out))


def vllm_prompt(store, request):
    from audiorl.rollouts.vllm_worker import WorkerPrompt

    return WorkerPrompt(request.prompt_ids, [store.wave(c) for c in request.clips], 1)


if __name__ == "__main__":
    main()
