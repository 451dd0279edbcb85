"""nnunetv2-diff4mm: Diff4MMLiTS-style multi-phase liver tumor synthesis as an nnU-Net v2 plugin."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

PTH_FILE = "nnunetv2_diff4mm.pth"  # imports nnunetv2_diff4mm.nnunet_hook at start-up: nnU-Net finds our trainers


class BuildPyWithPth(build_py):
    """Also place the .pth start-up hook at the root of site-packages (regular and editable installs)."""

    def run(self):
        super().run()
        self.copy_file(PTH_FILE, os.path.join(self.build_lib, PTH_FILE))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_FILE)]


setup(
    name="nnunetv2-diff4mm",
    version="0.2.0",
    description=(
        "nnU-Net v2 plugin: multi-phase liver CT pre-registration, normal-CT inpainting and latent-diffusion "
        "tumor synthesis (Diff4MMLiTS, arXiv 2412.20418)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    cmdclass={"build_py": BuildPyWithPth},
    packages=find_packages(include=["nnunetv2_diff4mm*", "synthesis*", "registration*"]),
    install_requires=[
        # torch: never newer than 2.14.1 (the newest release this project is tested with)
        "torch>=2.2,<=2.14.1",
        "nnunetv2>=2.8.1,<2.9",  # 2.8 finds external trainers through nnUNet_extTrainer
        "diffusers>=0.30",
        "safetensors>=0.4",
        "accelerate>=0.30",
        "monai>=1.4",  # 3D autoencoder / diffusion UNet (spatial_dims=3) and surface metrics
        "dynamic-network-architectures>=0.4",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3",
        "acvl-utils>=0.2",
        "SimpleITK>=2.3",
        "nibabel",  # NaN check of NIfTI voxels: SimpleITK silently maps NaN to 0 when reading NIfTI
        "numpy",
        "scipy",
        "tqdm",
        "filelock",  # the normal-CT cache's per-case locks (training/normal_cases.py)
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3"],
        "benchmark": ["itk-elastix>=0.20", "scikit-image>=0.22"],  # registration and inpainting anchors
    },
    entry_points={
        "console_scripts": [
            "diff4mm_phantom=nnunetv2_diff4mm.cli.phantom:main",
            "diff4mm_validate=nnunetv2_diff4mm.cli.validate:main",
            "diff4mm_montage=nnunetv2_diff4mm.cli.montage:main",
            "diff4mm_demo=nnunetv2_diff4mm.cli.demo:main",
            "diff4mm_register=nnunetv2_diff4mm.cli.register:main",
            "diff4mm_from_nnunet=nnunetv2_diff4mm.cli.from_nnunet:main",
            "diff4mm_benchmark=nnunetv2_diff4mm.cli.benchmark:main",
            "diff4mm_plan_cpu=nnunetv2_diff4mm.cli.plan_cpu:main",
            "diff4mm_synthesize=nnunetv2_diff4mm.cli.synthesize:main",
            "diff4mm_train_synthesizer=nnunetv2_diff4mm.cli.train_synthesizer:main",
            "diff4mm_inpaint=nnunetv2_diff4mm.cli.inpaint:main",
            "diff4mm_train_inpainter=nnunetv2_diff4mm.cli.train_inpainter:main",
            "diff4mm_predict=nnunetv2_diff4mm.cli.predict:main",
        ],
    },
)
