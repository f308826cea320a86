"""Package layout (metadata is in pyproject.toml).

The repository keeps the configs in configs/ and the quickstart's data sample in assets/;
the wheel ships them inside the package as luminet_jax/configs/ and luminet_jax/assets/,
so nothing but `luminet_jax` lands in site-packages.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_ASSETS = "luminet_jax.assets"


class _BuildPy(build_py):
    """assets/ also holds the script that rebuilds the sample: ship only the data."""

    def find_package_modules(self, package, package_dir):
        if package == _ASSETS:
            return []
        return super().find_package_modules(package, package_dir)


setup(
    packages=find_packages(include=["luminet_jax", "luminet_jax.*"])
    + ["luminet_jax.configs", _ASSETS],
    package_dir={"luminet_jax.configs": "configs", _ASSETS: "assets"},
    package_data={_ASSETS: ["cifar10-sample.tar.gz", "README.md"]},
    cmdclass={"build_py": _BuildPy},
)
