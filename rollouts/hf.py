"""Rollouts with transformers' ``generate`` on the trainer's own model (no weight sync needed).

Audio enters through ``AudioEmbedder``: the prompt's input embeddings carry the audio, so the
encoder runs once per unique clip (and not at all for a cached clip), however many completions
are sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.model.base import AudioLM
from audiorl.rollouts.base import Completion, RolloutEngine, RolloutRequest, SamplingParams
from transformers import GenerationConfig


class HFRolloutEngine(RolloutEngine):
    """Generates with the trainer's own module, so ``update_weights`` has nothing to do."""

    def __init__(self, lm: AudioLM, embedder: AudioEmbedder, config: object = None, seed: int = 0):
        super().__init__(lm, embedder, config, seed)
        self.batch_size = getattr(config, "batch_size", 64)

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        tok = self.lm.tokenizer
        sampling = {} if params.greedy else {
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,  # 0 disables it (None would fall back to transformers' default of 50)
        }
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            eos_token_id=self.lm.eos_token_ids,
            pad_token_id=tok.pad_token_id,
            bos_token_id=None,
            # Input-only tokens (audio placeholders) are never sampled.
            suppress_tokens=self.lm.special_input_token_ids,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=True,
            **sampling,
        )

    def generate(self, requests: Sequence[RolloutRequest], params: SamplingParams) -> list[list[Completion]]:
        rows = [(i, r) for i, r in enumerate(requests) for _ in range(r.n)]
        results: list[list[Completion]] = [[] for _ in requests]
        model = self.lm.model
        was_training = model.training
        model.eval()
        try:
            config = self._generation_config(params)
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                for (i, _), completion in zip(chunk, self._generate_chunk(model, [r for _, r in chunk], config)):
                    results[i].append(completion)
        finally:
            model.train(was_training)
        return results

    @torch.no_grad()
    def _generate_chunk(self, model, requests: list[RolloutRequest], config: GenerationConfig) -> list[Completion]:
        tok = self.lm.tokenizer
        device = next(model.parameters()).device
        width = max(len(r.prompt_ids) for r in requests)
        input_ids = torch.full((len(requests), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, r in enumerate(requests):  # left padding
            input_ids[row, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            attention_mask[row, width - len(r.prompt_ids) :] = 1
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        embeds = self.embedder.inputs_embeds(model, input_ids, [r.clips for r in requests])
        out = model.generate(
            input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config
        )
        new_tokens = out.sequences[:, width:]
        # scores are the processed logits the sampler drew from (temperature, top-k/p, suppression applied)
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
        token_logprobs = logprobs.gather(-1, new_tokens[:, : logprobs.size(1)].unsqueeze(-1)).squeeze(-1)
        stops = set(self.lm.eos_token_ids)
        completions = []
        for row in range(len(requests)):
            ids = new_tokens[row].tolist()
            end = next((k + 1 for k, t in enumerate(ids) if t in stops), None)
            finished = end is not None
            ids = ids[:end] if finished else ids
            completions.append(
                Completion(
                    token_ids=ids,
                    text=tok.decode(ids, skip_special_tokens=True),
                    logprobs=token_logprobs[row, : len(ids)].tolist(),
                    finished=finished,
                )
            )
        return completions
