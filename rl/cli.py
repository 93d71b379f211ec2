"""The ``audiorl`` command.

  audiorl train RECIPE [key=value ...]      train as the recipe says (RECIPE: a YAML path or a bundled name; --overwrite)
  audiorl validate RECIPE [key=value ...]   check a recipe without loading anything heavy (--list-keys: every key)
  audiorl train-rm RECIPE [key=value ...]   train a reward model on preference pairs (rl/reward_model.py)
  audiorl make-tiny OUT [--family F] [--seed N]   write a tiny random model (tests, quickstarts)
  audiorl make-data OUT [--task pitch|speech] [--seed N] ...   write an embedded data set
  audiorl recipes                           list the bundled recipes
  audiorl rewards                           list the rewards a recipe can name (built-in and plug-ins)
  audiorl rollout-server --model DIR [--port N] ...   serve vLLM rollouts to trainers (rollout.vllm.mode=server)
"""

from __future__ import annotations

import argparse
import logging
from contextlib import nullcontext
import os
import sys
import warnings
from importlib import resources

from audiorl.common.errors import AudioRLError, ConfigError


def bundled_recipes() -> dict[str, str]:
    folder = resources.files("audiorl.recipes")
    return {p.name.removesuffix(".yaml"): str(p) for p in folder.iterdir() if p.name.endswith(".yaml")}


def resolve_recipe(name: str) -> str:
    if os.path.isfile(name):
        return name
    bundled = bundled_recipes()
    key = name.removeprefix("recipes/").removesuffix(".yaml")
    if key in bundled:
        return bundled[key]
    raise ConfigError(f"recipe '{name}' is neither a file nor a bundled recipe ({', '.join(sorted(bundled))})")


KIND_NAMES = {"rl": "an RL (stages: sft, grpo, ppo, dpo)", "reward_model": "a reward-model"}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="audiorl", description="RL post-training for audio language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    keys_hint = (
        "Recipe keys, their defaults and meaning: `audiorl validate --list-keys`; bundled recipes: `audiorl recipes` "
        "(recipes/quickstart.yaml is commented); reward names and options: `audiorl rewards`."
    )
    for name, help_text, description in (
        ("train", "train as a recipe says",
         "Run an RL recipe's stages (sft, grpo, ppo, dpo) in order, each from the previous stage's weights, and write "
         "the adapter, merged weights, metrics, plot and summary to output_dir. The recipe is checked first "
         "(keys, values, rewards, every data row) and nothing loads if it is wrong."),
        ("validate", "check a recipe (RL or reward model), load nothing heavy",
         "Check a recipe as `train` would, on any machine, without loading a model: print the resolved recipe, "
         "and list inputs (checkpoints, data) that are not on this machine."),
        ("train-rm", "train a Bradley-Terry reward model on preference pairs",
         "Train a reward model (a sequence classifier with one score) on prompt/chosen/rejected pairs, for the "
         "preference_model reward (rl/reward_model.py, recipes/train_rm.yaml)."),
    ):
        p = sub.add_parser(name, help=help_text, description=f"{description} {keys_hint}")
        p.add_argument("recipe", nargs="?" if name == "validate" else None, help="recipe YAML path or bundled recipe name")
        p.add_argument(
            "overrides", nargs="*",
            help="key=value overrides (YAML values; list items by index, stages also by name): stages.grpo.max_steps=10 rewards.0.weight=0.5",
        )
        if name == "validate":
            p.add_argument("--list-keys", action="store_true", help="list every recipe key with its default and meaning, then exit")
        if name == "train":
            p.add_argument(
                "--overwrite", action="store_true",
                help="replace the outputs of an earlier run in output_dir (without it, a used output_dir is refused)",
            )
    p = sub.add_parser(
        "make-tiny", help="write a tiny random audio LLM (model, tokenizer, processor)",
        description="Write one of audiorl's tiny random audio LLMs (a few MB, offline) for tests and the quickstarts.",
    )
    p.add_argument("out", help="directory to write the checkpoint to (hub layout: transformers and vLLM load it)")
    p.add_argument(
        "--family", default="qwen2_audio", choices=["qwen2_audio", "qwen2_5_omni", "qwen3_omni_moe", "step_audio2"],
        help="model family (default qwen2_audio)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p = sub.add_parser(
        "make-data", help="write an embedded data set (audio + train/eval files)",
        description="Write a synthetic data set offline: audio clips plus train/eval files a recipe's data.train/data.eval can name.",
    )
    p.add_argument("out", help="directory to write the clips and the train/eval files to")
    p.add_argument(
        "--task", choices=["pitch", "speech"], default="pitch",
        help="pitch: high or low tones, labelled; speech: espeak speech with transcripts, gender, speed and pitch labels (default pitch)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the data (same seed, same bytes; default 0)")
    p.add_argument("--n-train", type=_positive_int, default=256, help="training rows (default 256)")
    p.add_argument("--n-eval", type=_positive_int, default=64, help="held-out rows (default 64)")
    p.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl", help="file format of train/eval (default jsonl)")
    sub.add_parser("recipes", help="list the bundled recipes")
    sub.add_parser("rewards", help="list the rewards a recipe can name")
    from audiorl.rollouts.server import build_parser

    build_parser(sub.add_parser("rollout-server", help="serve vLLM rollouts with audio to trainers over HTTP"))
    return parser


def quiet_warnings() -> None:
    """Warnings that say nothing about an audiorl run.

    TRL warns at import that the installed vLLM (0.32, the CPU build) is outside the range its own
    vLLM integration supports; audiorl never uses that integration (rollouts/ drives vLLM itself),
    so on every backend the warning is noise.
    """
    warnings.filterwarnings("ignore", message=r"TRL currently supports vLLM versions", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_warnings()
    # Models and data come from local files or are built here: never from a hub at run time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except AudioRLError as exc:
        print(f"audiorl: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "validate" and args.list_keys:
        from audiorl.rl.config import list_keys

        print("\n".join(list_keys()))
        return 0
    if args.command in ("train", "validate", "train-rm"):
        from audiorl.rl.config import recipe_kind

        if args.recipe is None:
            raise ConfigError(f"`audiorl {args.command}` needs a recipe (a YAML path or a bundled name: `audiorl recipes`)")

        path = resolve_recipe(args.recipe)
        if getattr(args, "overwrite", False):
            args.overrides = [*args.overrides, "overwrite=true"]
        kind = recipe_kind(path)
        wanted = {"train": "rl", "train-rm": "reward_model"}.get(args.command, kind)
        if kind != wanted:
            command = "audiorl train-rm" if kind == "reward_model" else "audiorl train"
            raise ConfigError(f"'{args.recipe}' is {KIND_NAMES[kind]} recipe: run it with `{command}`")
        from audiorl.common.errors import collect_missing_inputs

        # validate checks a recipe on any machine: inputs that live elsewhere are listed, not fatal
        with collect_missing_inputs() if args.command == "validate" else nullcontext([]) as missing:
            if kind == "reward_model":
                from audiorl.rl.reward_model import load_rm_config, rm_config_to_yaml, train_reward_model

                config, as_yaml, run = load_rm_config(path, args.overrides), rm_config_to_yaml, train_reward_model
            else:
                from audiorl.rl.config import load_recipe, to_yaml
                from audiorl.rl.train import train

                config, as_yaml, run = load_recipe(path, args.overrides), to_yaml, train
        if args.command == "validate":
            print(as_yaml(config))
            print(f"{args.recipe}: OK")
            for note in missing:
                print(f"  not on this machine (`audiorl train` stops on it): {note}")
            if kind == "rl" and not config.overwrite:
                from audiorl.rl.run_dir import refusal
                from audiorl.rl.train import run_inputs

                used = refusal(config.output_dir, run_inputs(config))
                if used:
                    print(f"  `audiorl train` would refuse: {used}")
            return 0
        run(config)
        return 0
    if args.command == "rewards":
        from audiorl.rewards import REWARDS, plugin_rewards

        from audiorl.rewards.registry import reward_options

        for name in REWARDS.names():
            doc = (REWARDS.get(name).__doc__ or "").strip().splitlines()
            print(f"{name:26s} {doc[0] if doc else ''}")
            options = reward_options(REWARDS.get(name))
            if options:
                print(f"{'':26s} options (kwargs): {', '.join(options)}")
        for name, ep in sorted(plugin_rewards().items()):
            print(f"{name:26s} (plug-in: {ep.value})")
        return 0
    if args.command == "make-tiny":
        from audiorl.model.tiny import build_tiny

        print(build_tiny(args.out, args.family, seed=args.seed))
        return 0
    if args.command == "make-data":
        from audiorl.data.synth import make_dataset

        paths = make_dataset(args.out, args.task, seed=args.seed, n_train=args.n_train, n_eval=args.n_eval, fmt=args.format)
        for split, path in paths.items():
            print(f"{split}: {path}")
        return 0
    if args.command == "rollout-server":
        from audiorl.rollouts.server import serve

        serve(args)
        return 0
    if args.command == "recipes":
        for name, path in sorted(bundled_recipes().items()):
            print(f"{name}\t{path}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
