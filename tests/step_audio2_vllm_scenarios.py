"""Step-Audio 2 in vLLM, what tests/vllm_scenarios.py does not cover, in a process of its own (vLLM binds
the process's threads on CPU): the weights vLLM loaded, clips longer than one 25 s chunk, two clips
side by side, and a vLLM LoRA adapter saved by PEFT from our model.

``python step_audio2_vllm_scenarios.py MODEL_DIR DATA_DIR WORK_DIR`` prints one JSON object of
measurements that tests/test_step_audio2_vllm.py asserts on.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

LONG_SECONDS = 31  # two chunks: 25 s + 6 s


def main() -> None:
    model_dir, data_dir, work = sys.argv[1:4]
    import numpy as np
    import torch
    from audiorl.data.audio import AudioStore, load_audio, save_audio
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.model.step_audio2 import chunk_token_counts
    from audiorl.rl.prompts import PromptEncoder
    from audiorl.rollouts import SamplingParams
    from audiorl.rollouts.hf import HFRolloutEngine
    from audiorl.rollouts.vllm_worker import VLLMWorker, WorkerPrompt, placeholder_options
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.lora.request import LoRARequest
    from vllm_scenarios import trainer_prompt_logprobs  # this script's own folder (tests/) is on sys.path

    torch.manual_seed(0)
    lm = load_audio_lm(model_dir)
    store = AudioStore()
    encoder = PromptEncoder(lm, store)
    rows = [json.loads(line) for line in open(os.path.join(data_dir, "eval.jsonl"))]
    paths = [os.path.join(data_dir, r["audio"]) for r in rows]
    # A clip over one chunk: the data's clips back to back (each its own pitch), cut at LONG_SECONDS.
    joined = np.concatenate([load_audio(p) for p in paths * 8])[: LONG_SECONDS * 16000]
    long_path = os.path.join(work, "long.wav")
    save_audio(long_path, joined)
    # 25 s and 100 samples: the last chunk is too short for a patch (an empty <audio_start><audio_end> block)
    tail_path = os.path.join(work, "empty_tail.wav")
    save_audio(tail_path, joined[: 25 * 16000 + 100])

    def request(*audio: str, text: str = rows[0]["prompt"]):
        parts = [{"type": "audio", "audio": a} for a in audio] + [{"type": "text", "text": text}]
        return encoder.request([{"role": "user", "content": parts}])

    requests = {
        "short": request(paths[0]),
        "long": request(long_path),
        "long_then_short": request(long_path, paths[1]),  # two clips' blocks side by side in one prompt
        "short_then_long": request(paths[2], long_path, text=rows[2]["prompt"]),
        "empty_last_chunk": request(tail_path),
    }
    out: dict = {name: chunk_token_counts(store.wave(requests[name].clips[0]).size) for name in ("long", "empty_last_chunk")}

    worker = VLLMWorker(
        model_dir, dtype="float32", seed=0, max_audio_per_prompt=2, stop_token_ids=lm.eos_token_ids,
        suppress_token_ids=lm.special_input_token_ids, engine_options={"enable_lora": True, "max_lora_rank": 8},
        **placeholder_options(lm),
    )

    # ---- the weights vLLM holds are the checkpoint's, every one of them
    checkpoint = load_file(os.path.join(model_dir, "model.safetensors"))

    used: set[str] = set()

    def compare(model):
        def source(name: str):
            name = name.replace("language_model.", "", 1)
            keys = [name]
            for packed, parts in (("qkv_proj", ("q_proj", "k_proj", "v_proj")), ("gate_up_proj", ("gate_proj", "up_proj"))):
                if f".{packed}." in name:
                    keys = [name.replace(packed, p) for p in parts]
            tensors = [checkpoint[k] for k in keys]
            used.update(keys)
            return torch.cat(tensors)

        names = {n.replace(".base_layer.", "."): p for n, p in model.named_parameters()}
        worst, missing, mismatched = 0.0, [], []
        for name, param in names.items():
            try:
                src = source(name)
            except KeyError:
                missing.append(name)
                continue
            if src.shape != param.shape:
                mismatched.append(f"{name} {tuple(param.shape)} {tuple(src.shape)}")
                continue
            worst = max(worst, (param.detach().float().cpu() - src.float()).abs().max().item())
        return {
            "params": len(names), "not_in_checkpoint": missing, "checkpoint_unused": sorted(set(checkpoint) - used),
            # vLLM's CPU backend repacks the language model's linear weights (the parameter is left empty)
            "repacked": [m for m in mismatched if " (0,) " in m], "shape_mismatch": [m for m in mismatched if " (0,) " not in m],
            "compared": len(names) - len(missing) - len(mismatched), "max_abs_diff": worst,
        }

    out["loaded"] = worker.llm.apply_model(compare)[0]
    out["checkpoint_tensors"] = len(checkpoint)

    # ---- long and side-by-side clips: the prompt vLLM expands is the trainer's, token for token
    embedder = AudioEmbedder(lm, store)
    hf = HFRolloutEngine(lm, embedder)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)

    def vllm_run(request, lora=None):
        prompt = WorkerPrompt(request.prompt_ids, [store.wave(c) for c in request.clips], 1)
        ids = worker.collapse(prompt)
        audio = [(w, 16000) for w in prompt.waves]
        result = worker.llm.generate(
            [{"prompt_token_ids": ids, "multi_modal_data": {"audio": audio if len(audio) > 1 else audio[0]}}],
            VLLMSamplingParams(max_tokens=16, temperature=0.0, prompt_logprobs=0, stop_token_ids=lm.eos_token_ids,
                               logit_bias={t: -1e9 for t in lm.special_input_token_ids}),
            lora_request=lora, use_tqdm=False,
        )[0]
        prompt_logprobs = [next(iter(d.values())).logprob for d in result.prompt_logprobs[1:]]
        return {"collapsed": len(ids), "expanded": list(result.prompt_token_ids), "greedy": list(result.outputs[0].token_ids),
                "prompt_logprobs": prompt_logprobs}

    def measure(lora=None):
        result = {}
        expected = {name: c[0].token_ids for name, c in zip(requests, hf.generate(list(requests.values()), greedy))}
        for name, request in requests.items():
            got = vllm_run(request, lora)
            gap = (trainer_prompt_logprobs(lm, embedder, request) - torch.tensor(got["prompt_logprobs"])).abs().max().item()
            result[name] = {
                "prompt_len": len(request.prompt_ids), "collapsed_len": got["collapsed"],
                "expanded_equal": got["expanded"] == request.prompt_ids,
                "greedy_vllm": got["greedy"], "greedy_hf": expected[name], "prompt_logprob_max_abs_diff": gap,
            }
        return result

    out["base"] = measure()

    # ---- a LoRA adapter saved by PEFT from our model, served by vLLM's LoRA, against the merged model
    lm.model = get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=16, target_modules=lm.lora_target_regex))
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapter_dir = os.path.join(work, "adapter")
    lm.model.save_pretrained(adapter_dir)
    out["adapter_files"] = sorted(os.listdir(adapter_dir))
    lm.model = lm.model.merge_and_unload()
    out["lora"] = measure(LoRARequest("step_audio2_test", 1, adapter_dir))
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
