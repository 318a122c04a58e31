"""Atomic writes through etils.epath (local or gs://): readers see the old file or the new one."""

import uuid

from etils import epath


def temp_name(path: epath.Path) -> epath.Path:
  """A unique sibling to write before `tmp.replace(path)` moves it into place."""
  return path.parent / f'{path.name}.tmp-{uuid.uuid4().hex}'


def write_atomic(path: epath.Path, data: bytes) -> None:
  tmp = temp_name(path)
  tmp.write_bytes(data)
  tmp.replace(path)
