"""What a user gets from `pip install`: console scripts, and nnU-Net finding our trainers with no set-up."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_carries_the_nnunet_startup_hook(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), REPO], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("nnunetv2_diff4mm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunetv2_diff4mm.pth" in names  # lands at the root of site-packages
    assert "nnunetv2_diff4mm/nnunet_trainers/diff4mm_trainers.py" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("diff4mm_phantom", "diff4mm_validate", "diff4mm_register", "diff4mm_inpaint",
                   "diff4mm_train_synthesizer", "diff4mm_demo", "diff4mm_predict", "diff4mm_benchmark"):
        assert script in entry_points


def test_nnunet_finds_diff4mm_trainers_by_name_without_configuration():
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
            "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
            "for name in ('Diff4MMTrainer', 'Diff4MMTrainer_synthetic25', 'nnUNetTrainer_Diff4MMDemo'):\n"
            "    cls = find(name)\n"
            "    print(cls.__name__, cls.__mro__[1].__name__, issubclass(cls, nnUNetTrainer))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd="/")
    assert result.returncode == 0, result.stderr[-1500:]
    # found by name, nnU-Net trainers; the CPU-progress mixin sits right below the classes that use it
    assert "Diff4MMTrainer EpochProgress True" in result.stdout
    assert "Diff4MMTrainer_synthetic25 Diff4MMTrainer True" in result.stdout
    assert "nnUNetTrainer_Diff4MMDemo EpochProgress True" in result.stdout


def test_user_trainer_paths_are_kept():
    env = {**os.environ, "nnUNet_extTrainer": "/my/trainers"}
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ['nnUNet_extTrainer'])"],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", env=env, cwd="/").stdout.strip()
    assert out.split(os.pathsep)[0] == "/my/trainers" and out.endswith("nnunet_trainers")


def test_trainer_variants_keep_nnunets_constructor_signature():
    """nnUNetTrainer records its init arguments by parameter name: *args/**kwargs would crash nnUNetv2_train."""
    import inspect

    from nnunetv2_diff4mm.nnunet_trainers import diff4mm_trainers

    for name in diff4mm_trainers.__all__:
        params = inspect.signature(getattr(diff4mm_trainers, name).__init__).parameters
        assert list(params)[:6] == ["self", "plans", "configuration", "fold", "dataset_json", "device"], name
