"""dynpt: dynamic-difficulty pretraining of vision-language models in JAX/Flax."""
import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


setuptools.setup(
    name="dynpt",
    version="0.1.0",
    description="Dynamic difficulty pretraining of vision-language models (JAX/Flax).",
    long_description=(_HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["dynpt", "dynpt.*", "tasks", "tasks.*"]),
    package_data={"dynpt": ["assets/*", "assets/**/*"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={"test": _requirements("requirements-test.txt")},
    entry_points={
        "console_scripts": [
            "dynpt=dynpt.main:run",
        ],
    },
)
