#!/usr/bin/env bash
set -uo pipefail
source /work/main/.venv/bin/activate
export nnUNet_raw=/work/ev/raw nnUNet_preprocessed=/work/ev/pre nnUNet_results=/work/ev/res
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
W=/work/ev/ba; CODE=/work/ev/code_after2; export PYTHONPATH=$CODE; cd $CODE
date
python benchmarks/registration.py --cases 2 --seed 1 --work $W/reg --no-elastix -np 1 > $W/registration_masks.txt 2>&1; echo rc $?
python benchmarks/inpainting.py --preset tiny --epochs 2 --steps-per-epoch 20 --threads 1 -np 1 --skip-coverage --train-cases 2 --test-cases 2 --out $W/inp_masks > $W/inpainting_masks.txt 2>&1; echo rc $?
python -m nnunetv2_diff4mm.cli.train_inpainter -d 601 -f 5 --preset tiny --epochs 2 --seed 0 -o $W/train_masks/inpainter --device cpu > $W/train_inpainter_masks.txt 2>&1; echo rc $?
(cd $W/train_masks && find . -name "*.safetensors" | sort | xargs sha256sum) > $W/weights_masks.txt
date
