"""Atomic writes through etils.epath (local or gs://): readers see the old file or the new one,
never a partial one, so a kill at any moment leaves the workdir consistent."""

import json
import uuid

from etils import epath


def temp_name(path: epath.Path) -> epath.Path:
  """A unique sibling to write before `tmp.replace(path)` moves it into place."""
  return path.parent / f'.{path.name}.tmp-{uuid.uuid4().hex}'


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_name(path)
  tmp.write_bytes(data)
  tmp.replace(path)


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_json_atomic(path: epath.PathLike, obj) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')
