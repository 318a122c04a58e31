"""What `--config` accepts: a config file's path, or the name of a config shipped in configs/.

The shipped configs live in the repository's top-level configs/ folder and are installed as the
package autoscale_jax.configs, so a bare name works after a plain `pip install .`, from any
directory. Either form may end in `:ARG`, which ml_collections passes to get_config.
"""

import pathlib

from autoscale_jax import configs
from autoscale_jax.errors import UserError

_DIR = pathlib.Path(configs.__file__).parent


def names() -> tuple[str, ...]:
  """The shipped configs' names, sorted."""
  return tuple(sorted(p.stem for p in _DIR.glob('*.py') if p.stem != '__init__'))


def resolve(spec: str) -> str:
  """`NAME[:ARG]` of a shipped config becomes `PATH[:ARG]`; a path is returned as given."""
  name, colon, arg = spec.partition(':')
  shipped = ', '.join(names())
  if name.endswith('.py') or '/' in name:
    if not pathlib.Path(name).is_file():
      raise UserError(f'--config={spec}: there is no file {name}; give the path of a config file '
                      f'or the name of a shipped config ({shipped}).')
    return spec
  if name not in names():
    raise UserError(f'--config={spec}: {name!r} is not a shipped config ({shipped}); give one of '
                    'those names or the path of a config file.')
  return f'{_DIR / name}.py{colon}{arg}'
