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
        "tensorboard>=2.21.0",
        "numpy",
        "pillow",
        "scikit-learn",
        "etils",
        "absl-py",
    ],
    extras_require={"test": ["pytest>=9.2.0", "pytest-xdist>=3.8.0"]},
)
