"""nnunetv2-diff4mm: Diff4MMLiTS-style multi-phase liver tumor synthesis as an nnU-Net v2 plugin."""
from setuptools import find_packages, setup

setup(
    name="nnunetv2-diff4mm",
    version="0.1.0",
    description=(
        "nnU-Net v2 plugin: multi-phase liver CT pre-registration, normal-CT inpainting and latent-diffusion "
        "tumor synthesis (Diff4MMLiTS, arXiv 2412.20418)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
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
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3"],
        "benchmark": ["itk-elastix>=0.20"],
    },
    entry_points={
        "console_scripts": [
            "diff4mm_phantom=nnunetv2_diff4mm.cli.phantom:main",
            "diff4mm_validate=nnunetv2_diff4mm.cli.validate:main",
            "diff4mm_montage=nnunetv2_diff4mm.cli.montage:main",
            "diff4mm_demo=nnunetv2_diff4mm.cli.demo:main",
            "diff4mm_register=nnunetv2_diff4mm.cli.register:main",
        ],
    },
)
