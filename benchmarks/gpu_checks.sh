#!/usr/bin/env bash
# Every check that needs a GPU, in one run sized for at most 8 minutes of one H100/H200.
# Writes its JSON/PNG under benchmarks/results/ (and copies them to $OUT when that is set, for a
# machine whose files must be fetched back). Each step has its own time limit, so one that hangs
# or runs out of memory does not cost the others; the summary at the end says which finished.
#
#   bash benchmarks/gpu_checks.sh              # from the repository root, on a machine with a GPU
#
# 1. long inputs: T5-small SRformer train step at k = 16384, batch 8, bf16, with its measured
#    memory (compiled memory analysis and the device's peak bytes in use), largest k at batch 8,
#    generation at 16k                                                  (benchmarks/long_inputs.py)
# 2. MFU: train step at batch 64, k = 1024, bf16, full vs SRformer      (benchmarks/train_throughput.py)
# 3. decode scaling: ms per generated token against the input length    (benchmarks/decode_scaling.py)
# 4. generate vs Hugging Face PyTorch on the same GPU                   (benchmarks/vs_hf_torch.py)
# 5. the forms written for XLA:CPU against the plain JAX forms (model.kernels="cpu" vs "xla"): train
#    step and greedy decoding, sweep model and T5-small, bf16 — is "auto" (plain on GPU) right here?
#                                                                       (benchmarks/kernel_forms.py)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_PLATFORMS=cuda
RESULTS=benchmarks/results
status=()
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=KILL "$limit" "$@"
  local rc=$?
  status+=("$name: rc=$rc in $((SECONDS - t0)) s")
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import jax; print(jax.__version__, jax.devices())" || exit 1

step long_inputs 200 python3 benchmarks/long_inputs.py --platform gpu --lengths 1024,4096,16384 --batch 8 \
  --dtype bfloat16 --variants blockwise,blockwise+remat --repeats 3 --skip_memory
step mfu 90 python3 benchmarks/train_throughput.py --platform gpu --lengths 1024 --batch 64 --dtype bfloat16 \
  --repeats 5
step decode_scaling 70 python3 benchmarks/decode_scaling.py --platform gpu --lengths 512,1024,4096,16384 \
  --batch 8 --new_tokens 128 --repeats 3
step vs_hf_torch 90 python3 benchmarks/vs_hf_torch.py --platform gpu --batch 8 --source_len 512 \
  --new_tokens 128 --repeats 3 --rounds 1
step kernel_forms 90 python3 benchmarks/kernel_forms.py --platform gpu --dtype bfloat16 --repeats 5

echo "=== summary"
printf '%s\n' "${status[@]}" | tee "$RESULTS/gpu_checks_status.txt"
if [ -n "${OUT:-}" ]; then
  cp "$RESULTS"/*_gpu*.json "$RESULTS"/*_gpu*.png "$RESULTS/gpu_checks_status.txt" "$OUT"/ 2>/dev/null || true
fi
