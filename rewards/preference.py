"""A learned preference reward: a Bradley-Terry reward model scores each prompt + completion.

As in Step-Audio's RLHF stage, a sequence classifier with one output (trained on chosen/rejected
pairs by ``audiorl train-rm``) gives every completion a real-valued score; higher is better. The
scale is the model's own (unbounded reals; only differences are meaningful), so ``normalize`` can
put it in z-score units: per call (``batch``) or with a running mean and standard deviation kept
across calls for each loaded model (``running``).

The reward model reads text only. Audio placeholders in prompts and completions (``<|AUDIO|>``,
``<|audio_bos|>...<|audio_eos|>``, ``<audio_patch>`` and Qwen2-Audio's ``Audio 1:`` prefix) are
removed before rendering, so the score depends on the prompt's words and the completion alone.

Rendering (the same in training and scoring, see ``PreferenceScorer.render``): the ``template``
is ``"chat"`` (the tokenizer's chat template with user = prompt, assistant = completion) or a format
string with ``{completion}`` and optionally ``{prompt}``. By default it is the template the model was
trained with (recorded in ``audiorl_rm.json`` by ``audiorl train-rm``), else ``"chat"`` when the
tokenizer has a chat template, else ``"{prompt}\\n{completion}"``. Trailing whitespace is dropped and
the tokenizer's EOS token appended (as TRL's RewardTrainer does), and the classifier reads the last
non-padding token. Texts over ``max_length`` tokens keep their last ``max_length`` tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import string
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError, missing_input
from audiorl.rewards.registry import reward
from audiorl.rewards.text import as_text

log = logging.getLogger(__name__)

NAME = "preference_model"
META_FILE = "audiorl_rm.json"  # written by `audiorl train-rm` next to the weights: how the model reads text
DEFAULT_TEMPLATE = "{prompt}\n{completion}"
NORMALIZE = ("none", "batch", "running")
DTYPES = ("float32", "bfloat16", "float16")

_AUDIO_TAG = r"<\|?/?[\w.-]*audio[\w.-]*\|?>"
AUDIO_PLACEHOLDERS = re.compile(rf"(?:\bAudio \d+:[ \t]*)?(?:{_AUDIO_TAG})+\n?", re.IGNORECASE)


def strip_audio_placeholders(text: str) -> str:
    """Remove audio special tokens and placeholders (the reward model reads text only).

    >>> strip_audio_placeholders("Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\nIs it high?")
    'Is it high?'
    >>> strip_audio_placeholders("<audio_patch><audio_patch>What is said? <|AUDIO|>")
    'What is said? '
    """
    return AUDIO_PLACEHOLDERS.sub("", text)


def check_template(template: str | None, where: str) -> None:
    """``None``, ``"chat"`` or a format string naming ``{completion}`` (and optionally ``{prompt}``).

    >>> check_template("Q: {prompt}\\nA: {completion}", "x")
    >>> check_template("{answer}", "data.template")
    Traceback (most recent call last):
    ...
    audiorl.common.errors.ConfigError: data.template: '{answer}' may only name {prompt} and {completion}, and must name {completion}
    """
    if template is None or template == "chat":
        return
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"{where}: '{template}' is not a valid format string: {exc}") from None
    if "completion" not in fields or not fields <= {"prompt", "completion"}:
        raise ConfigError(f"{where}: '{template}' may only name {{prompt}} and {{completion}}, and must name {{completion}}")


class RunningStats:
    """Mean and (population) standard deviation over every value seen, merged batch by batch (Chan/Welford).

    >>> s = RunningStats(); s.update([1.0, 2.0]); s.update([3.0, 4.0]); (s.count, s.mean, round(s.std, 6))
    (4, 2.5, 1.118034)
    """

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Sequence[float]) -> None:
        x = np.asarray(values, dtype=np.float64)
        if x.size == 0:
            return
        n, mean = x.size, float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


def zscore(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    # A constant batch (or a single value) has no spread: centre it rather than divide by ~0.
    return (values - mean) / std if std > 1e-8 else values - mean


class PreferenceScorer:
    """A loaded reward model and its tokenizer: renders, tokenizes and scores prompt + completion texts."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu", meta: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.meta = dict(meta or {})
        self.running = RunningStats()
        # The classifier pools the last token that is not padding, so padding must use the id it looks for;
        # prefer the tokenizer's pad (what TRL's RewardTrainer pads and records in the config with).
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = model.config.get_text_config().pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id
        if pad_id is None:
            raise ConfigError(f"reward '{NAME}': the reward model's tokenizer has neither a pad nor an EOS token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
        model.config.get_text_config().pad_token_id = pad_id
        model.config.pad_token_id = pad_id
        self.pad_id = pad_id

    # ---------------------------------------------------------------- texts
    def resolve_template(self, template: str | None = None) -> str:
        template = template or self.meta.get("template")
        if template is None:
            template = "chat" if getattr(self.tokenizer, "chat_template", None) else DEFAULT_TEMPLATE
        if template == "chat" and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"reward '{NAME}': template 'chat' but the reward model's tokenizer has no chat template")
        check_template(template, f"reward '{NAME}': template")
        return template

    def render(self, prompt: object, completion: object, template: str) -> str:
        prompt_text = strip_audio_placeholders(as_text(prompt)).strip()
        completion_text = strip_audio_placeholders(as_text(completion))
        if template == "chat":
            messages = [{"role": "user", "content": prompt_text}, {"role": "assistant", "content": completion_text}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        else:
            text = template.format(prompt=prompt_text, completion=completion_text)
        text = text.rstrip()
        eos = self.tokenizer.eos_token
        if eos and not text.endswith(eos):
            text += eos
        return text

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts))["input_ids"]  # as TRL tokenizes (default special tokens)
        return [list(x) if len(x) else [self.pad_id] for x in ids]

    def max_length(self, max_length: int | None = None) -> int:
        config = self.model.config.get_text_config()
        return int(max_length or self.meta.get("max_length") or getattr(config, "max_position_embeddings", None) or 4096)

    # -------------------------------------------------------------- scoring
    def score_ids(self, sequences: Sequence[Sequence[int]], batch_size: int = 16, max_length: int | None = None) -> np.ndarray:
        """One score per token sequence; longer ones keep their last ``max_length`` tokens."""
        import torch

        limit = self.max_length(max_length)
        sequences = [list(s)[-limit:] for s in sequences]
        out = np.zeros(len(sequences), dtype=np.float64)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths share a batch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    width = max(len(sequences[i]) for i in rows)
                    ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for j, i in enumerate(rows):  # right padding, as in training: positions start at 0
                        ids[j, : len(sequences[i])] = torch.tensor(sequences[i])
                        mask[j, : len(sequences[i])] = 1
                    logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), use_cache=False).logits
                    out[rows] = logits[:, 0].float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def score(
        self,
        prompts: Sequence[object] | None,
        completions: Sequence[object],
        *,
        batch_size: int = 16,
        template: str | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        template = self.resolve_template(template)
        prompts = [""] * len(completions) if prompts is None else list(prompts)
        texts = [self.render(p, c, template) for p, c in zip(prompts, completions, strict=True)]
        return self.score_ids(self.encode(texts), batch_size=batch_size, max_length=max_length)


# ------------------------------------------------------------------ loading
_SCORERS: dict[tuple[str, str, str], PreferenceScorer] = {}
_LOCK = threading.Lock()


def check_device(device: str, where: str) -> str:
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where}: '{device}' is not a device (cpu, cuda, cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where}: '{device}' but no CUDA device is available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: '{device}' but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def read_meta(path: str) -> dict:
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isfile(meta_path):
        return {}
    with open(meta_path) as f:
        return json.load(f)


def load_scorer(path: str, device: str = "cpu", dtype: str = "float32") -> PreferenceScorer:
    """The reward model at ``path`` on ``device``, loaded once per process (eval mode)."""
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"reward '{NAME}': model '{path}' is not a Hugging Face checkpoint directory (no config.json)")
    if dtype not in DTYPES:
        raise ConfigError(f"reward '{NAME}': dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    check_device(device, f"reward '{NAME}': device")
    key = (os.path.realpath(path), device, dtype)
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = _load(path, device, dtype)
        return _SCORERS[key]


def _load(path: str, device: str, dtype: str) -> PreferenceScorer:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"reward '{NAME}': model '{path}' could not be loaded as a sequence classifier: {exc}") from exc
    if model.config.num_labels != 1:
        raise ConfigError(f"reward '{NAME}': model '{path}' has {model.config.num_labels} labels; a reward model has 1")
    model.to(device).eval().requires_grad_(False)
    log.info("loaded reward model %s on %s (%s)", path, device, dtype)
    return PreferenceScorer(model, tokenizer, device, read_meta(path))


def reset_running_stats() -> None:
    """Forget every loaded model's running normalisation statistics (e.g. between experiments)."""
    for scorer in _SCORERS.values():
        scorer.running = RunningStats()


def check_options(model=None, batch_size=16, max_length=None, normalize="none", template=None, **_) -> None:
    """The reward's kwargs, checked when a recipe is validated (before any model loads) and on each call."""
    if not model:
        raise ConfigError(f"reward '{NAME}' needs kwargs.model: the path of a reward model checkpoint")
    if not os.path.isfile(os.path.join(model, "config.json")):
        missing_input(f"reward '{NAME}': model '{model}' is not a Hugging Face checkpoint directory (no config.json)")
    if normalize not in NORMALIZE:
        raise ConfigError(f"reward '{NAME}': normalize '{normalize}' is not one of {', '.join(NORMALIZE)}")
    if int(batch_size) < 1:
        raise ConfigError(f"reward '{NAME}': batch_size must be positive, got {batch_size}")
    if max_length is not None and int(max_length) < 1:
        raise ConfigError(f"reward '{NAME}': max_length must be positive, got {max_length}")
    check_template(template, f"reward '{NAME}': template")


@reward(NAME)
def preference_model(
    completions: Sequence,
    prompts: Sequence | None = None,
    model: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    max_length: int | None = None,
    normalize: str = "none",
    template: str | None = None,
    dtype: str = "float32",
    **_,
) -> list[float]:
    """The reward model's score of each prompt + completion: a real number, higher is better.

    ``model``: a checkpoint directory (``audiorl train-rm``'s ``OUTPUT/model``, or any Hugging Face
    sequence classifier with one label). ``device`` is the reward model's own (``cpu``, ``cuda:1``).
    ``normalize``: ``none`` (raw scores), ``batch`` (z-scores within this call) or ``running``
    (z-scores against every score this model has given in this process). ``template``: see the
    module docstring.
    """
    check_options(model, batch_size, max_length, normalize, template)
    scorer = load_scorer(model, device, dtype)
    if not len(completions):
        return []
    scores = scorer.score(prompts, completions, batch_size=int(batch_size), template=template, max_length=max_length)
    if normalize == "batch":
        scores = zscore(scores, float(scores.mean()), float(scores.std()))
    elif normalize == "running":
        scorer.running.update(scores)
        scores = zscore(scores, scorer.running.mean, scorer.running.std)
    return [float(x) for x in scores]


preference_model.check_kwargs = check_options
