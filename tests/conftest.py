"""Every test sees 8 fake CPU devices; the flag must be set before jax is imported."""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Worker subprocesses (multi-process tests) import the package from this checkout.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ['PYTHONPATH'] = os.pathsep.join(
    p for p in (_ROOT, os.environ.get('PYTHONPATH', '')) if p)

# Compiled programs are cached on disk across the test processes of one CI run (the subprocess
# tests compile the same steps again); the cache only saves time, never changes a result.
import tempfile  # noqa: E402

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'autoscale_jax_test_jit_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
