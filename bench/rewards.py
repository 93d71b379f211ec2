"""Benchmark the built-in rewards: samples per second through ``RewardSet``, and worker processes.

    python bench/rewards.py                 # 1024 samples per reward, best of 3
    python bench/rewards.py --n 4096 --workers 2

Each built-in scores the same kind of completions it meets in training (a ``<think>`` block and an
``<answer>``), called the way the trainer calls it. The last table scores long English transcripts
(CPU-heavy: Whisper normalisation + WER) in the trainer's process and in ``--workers`` processes,
and what starting those processes costs.
Prints markdown tables (the rows of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import random
import time
from types import SimpleNamespace

WORDS = "the cat sat on a mat while my colour neighbour said twenty five dogs barked loudly at night".split()


def spec(name, **options):
    kwargs = options.pop("kwargs", {})
    return SimpleNamespace(name=name, weight=1.0, kwargs=kwargs, alias=None, **options)


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def cases(n: int, rng: random.Random) -> dict[str, tuple[list, list[str], dict]]:
    think = [f"<think>{sentence(rng, 40)}</think>" for _ in range(n)]
    labels = [rng.choice(["high", "low"]) for _ in range(n)]
    choices = [["Rain", "Thunder", "A dog barking", "Silence"]] * n
    refs = [sentence(rng, 20) for _ in range(n)]
    zh = ["今天天气很好我们去公园散步吧一百二十三" for _ in range(n)]
    para = [{"gender": "female", "age": "young adult", "emotion": "happy", "pitch": "high"} for _ in range(n)]
    return {
        "label_accuracy": ([spec("label_accuracy")], [f"{t}<answer>{rng.choice(['high', 'low'])}</answer>" for t in think], {"label": labels}),
        "cot_format": ([spec("cot_format")], [f"{t}<answer>x</answer>" for t in think], {}),
        "think_length": ([spec("think_length")], think, {}),
        "mcq_accuracy": ([spec("mcq_accuracy")], [f"{t}The answer is ({rng.choice('ABCD')})." for t in think], {"choices": choices, "answer": ["B"] * n}),
        "asr_correctness (en, WER)": ([spec("asr_correctness", kwargs={"language": "en"})], [f"<answer>{sentence(rng, 20)}</answer>" for _ in range(n)], {"transcript": refs}),
        "asr_correctness (zh, CER)": ([spec("asr_correctness")], [f"<answer>{z[::-1]}</answer>" for z in zh], {"transcript": zh}),
        "paralinguistic_accuracy": ([spec("paralinguistic_accuracy")], [f"{t}<answer>A young woman, happy, with a high-pitched voice.</answer>" for t in think], {"attributes": para}),
    }


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from audiorl.rewards import RewardSet

    rng = random.Random(0)
    print(f"{args.n} samples per call, best of {args.repeats}\n")
    print("| reward | s per call | samples/s |")
    print("|---|---|---|")
    for name, (specs, completions, columns) in cases(args.n, rng).items():
        rewards = RewardSet(specs)
        rewards.score(completions[:8], columns={k: v[:8] for k, v in columns.items()})  # imports, vocabularies
        s = best_of(args.repeats, lambda: rewards.score(completions, columns=columns))
        print(f"| {name} | {s:.3f} | {args.n / s:,.0f} |", flush=True)

    long_refs = [sentence(rng, 400) for _ in range(args.n)]
    long_hyps = [f"<answer>{sentence(rng, 400)}</answer>" for _ in range(args.n)]
    print(f"\nLong transcripts (400 words, English normalisation + WER), {args.n} samples\n")
    print("| where | s per call | samples/s |")
    print("|---|---|---|")
    for workers in (0, args.workers):
        rewards = RewardSet([spec("asr_correctness", workers=workers, kwargs={"language": "en"})])
        try:
            start = best_of(1, lambda: rewards.score(long_hyps[:4], columns={"transcript": long_refs[:4]}))  # the pool
            s = best_of(args.repeats, lambda: rewards.score(long_hyps, columns={"transcript": long_refs}))
        finally:
            rewards.close()
        where = "trainer's process" if workers == 0 else f"{workers} worker processes"
        print(f"| {where} | {s:.2f} | {args.n / s:,.0f} |", flush=True)
    # A reward's timeout_s also covers this, on its first call and after every timeout (the pool is rebuilt).
    print(f"\nFirst call in {args.workers} new worker processes (starting them, 4 samples): {start:.2f} s")


if __name__ == "__main__":
    main()
