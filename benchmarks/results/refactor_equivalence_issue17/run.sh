#!/usr/bin/env bash
# Issue #17 acceptance: the refactors of 2026-12-07 (before = f2d7cb9^ = 8b075a0) print the same benchmark figures
# and train the same weights as HEAD. Same inputs, one thread, fixed seeds.
set -uo pipefail
source /work/main/.venv/bin/activate
export nnUNet_raw=/work/ev/raw nnUNet_preprocessed=/work/ev/pre nnUNet_results=/work/ev/res
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/work/ev/ba
B=/work/ev/raw/Dataset601_EvPhantom/diff4mm/synthesizer_fold5
NORMAL=/work/ev/raw/Dataset601_EvPhantom/diff4mm/normal_fold5
date
PYTHONPATH=/work/ev/code_after python /work/ev/code_after/benchmarks/registration.py --cases 2 --seed 1 --work $W/reg --no-elastix -np 1 --phantom-only 2>/dev/null || true
for V in before after; do
  if [ $V = before ]; then CODE=/tmp/before; else CODE=/work/ev/code_after; fi
  export PYTHONPATH=$CODE
  cd $CODE
  echo "=== $V: registration"; date
  python benchmarks/registration.py --cases 2 --seed 1 --work $W/reg --no-elastix -np 1 > $W/registration_$V.txt 2>&1; echo rc $?
  echo "=== $V: inpainting"; date
  python benchmarks/inpainting.py --preset tiny --epochs 2 --steps-per-epoch 20 --threads 1 -np 1 --skip-coverage --train-cases 2 --test-cases 2 --out $W/inp_$V > $W/inpainting_$V.txt 2>&1; echo rc $?
  echo "=== $V: synthesis"; date
  python benchmarks/synthesis.py --bundle $B --cases 2 --eval-cases 2 --samples 2 --threads 1 --work $W/syn_$V > $W/synthesis_$V.txt 2>&1; echo rc $?
  echo "=== $V: tiny trainings"; date
  python -m nnunetv2_diff4mm.cli.train_inpainter -d 601 -f 5 --preset tiny --epochs 2 --seed 0 -o $W/train_$V/inpainter --device cpu > $W/train_inpainter_$V.txt 2>&1; echo rc $?
  python -m nnunetv2_diff4mm.cli.train_synthesizer -d 601 -f 5 --preset tiny --epochs 1 --seed 0 -o $W/train_$V/synthesizer --normal $NORMAL --device cpu > $W/train_synthesizer_$V.txt 2>&1; echo rc $?
  (cd $W/train_$V && find . -name "*.safetensors" | sort | xargs sha256sum) > $W/weights_$V.txt
done
date
