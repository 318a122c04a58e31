"""SIGKILL during training (while a checkpoint is written, just after one is committed), restart,
and end bitwise equal to an uninterrupted run: loss curve, final state and result.

bench/kill_long.py runs the same harness with many random kills (also between checkpoints).
"""

import random
import shutil
import threading

import kill_harness as kh


def test_kills_at_random_moments_change_nothing(tmp_path):
  prepared = tmp_path / 'prepared'
  kh.prepare(prepared)  # one tokenizer for both runs (trainers break ties per process)
  reference, interrupted = tmp_path / 'reference', tmp_path / 'interrupted'
  shutil.copytree(prepared, reference)
  shutil.copytree(prepared, interrupted)

  straight = []  # the uninterrupted run trains alongside the interrupted one
  thread = threading.Thread(target=lambda: straight.append(kh.launch(reference)))
  thread.start()
  rng = random.Random(7)
  kills = [kh.Kill('tmp', rng.choice([1, 2]) * kh.EVERY),  # while a checkpoint is being written
           kh.Kill('commit', rng.choice([3, 4, 5]) * kh.EVERY)]  # just after one is renamed in
  launches = kh.kill_and_resume(interrupted, kills)
  thread.join()
  assert straight[0].returncode == 0, straight[0].log[-5000:]
  assert [l.killed for l in launches] == [True, True, False]
  assert launches[-1].resumed_from is not None
  assert kh.differences(kh.run_dir(reference), kh.run_dir(interrupted)) == []
