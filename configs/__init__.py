"""The shipped experiment configs, installed as the package autoscale_jax.configs.

`--config=NAME` picks one of these files by its name (autoscale_jax/config_files.py); code imports
them as `from autoscale_jax.configs import tiny`.
"""
