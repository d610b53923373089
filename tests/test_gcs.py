"""gs:// paths end to end against a local Cloud Storage emulator: a run trained on a token store, refused while
another host's lease holds its workdir, resumed taking that lock over, sampled, exported and plotted with its store,
workdir and export in a bucket; a bucket that does not exist is refused."""

import json
import subprocess

import commands
from conftest import REPO, command
from gcs import Emulator, emulator  # noqa: F401  (the fixture)
from test_cli import assert_one_line_error
from flaxlm.data import lock

SHIPPED_CORPUS = REPO / 'data/corpus/tinyshakespeare.txt.gz'


def run(emulator: Emulator, name: str, *args: str) -> subprocess.CompletedProcess:
  """Runs the flaxlm command `name` with the emulator's environment; checks it succeeded."""
  result = commands.run(command(name), *args, cwd=REPO, env=emulator.env)
  assert result.returncode == 0, result.stderr
  return result


def test_a_run_in_a_bucket_trains_resumes_and_is_sampled_exported_and_plotted(emulator):
  bucket = 'flaxlm-run'
  workdir, exported, tokens = f'{emulator.create_bucket(bucket)}/run', f'gs://{bucket}/export', f'gs://{bucket}/store'
  run(emulator, 'flaxlm-data', 'prepare', str(SHIPPED_CORPUS), f'--output={tokens}', '--tokenizer=char')
  assert {'store/manifest.json', 'store/train-00000.array_record'} <= set(emulator.objects(bucket, 'store/'))
  train = lambda steps, *flags: run(emulator, 'flaxlm-train', '--config=tiny', f'--workdir={workdir}',
                                   f'--config.data.path={tokens}', f'--config.train.steps={steps}', *flags)
  assert 'step 10 |' in train(10).stdout
  assert {'run/config.json', 'run/tokenizer.json', 'run/metrics.jsonl'} <= set(emulator.objects(bucket, 'run/'))
  assert 'run/checkpoints/10/' in ' '.join(emulator.objects(bucket, 'run/checkpoints/'))

  assert 'run/' + lock.LOCK not in emulator.objects(bucket, 'run/')  # Released at exit.
  theirs = {**lock.new_record(), 'host': 'another-host', 'pid': 4321}  # A live writer elsewhere, its lease fresh.
  emulator.write(bucket, 'run/' + lock.LOCK, json.dumps(theirs).encode())
  refused = commands.run(command('flaxlm-train'), '--config=tiny', f'--workdir={workdir}',
                         f'--config.data.path={tokens}', '--config.train.steps=20', cwd=REPO, env=emulator.env)
  assert_one_line_error(refused, f'{workdir} is being written by process 4321 on another-host since ')
  resumed = train(20, '--take_over').stdout
  assert f'took over the lock of {workdir} from process 4321 on another-host' in resumed
  assert 'step 5 |' not in resumed and 'step 20 |' in resumed  # Continues from step 10's checkpoint.
  assert 'run/' + lock.LOCK not in emulator.objects(bucket, 'run/')
  records = [json.loads(line) for line in emulator.read(bucket, 'run/metrics.jsonl').decode().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [5, 10, 15, 20]
  assert any(name.startswith('run/tensorboard/events') for name in emulator.objects(bucket, 'run/tensorboard/'))

  greedy = ('--prompt=ROMEO:', '--max_new_tokens=12', '--temperature=0')
  from_run = run(emulator, 'flaxlm-sample', f'--workdir={workdir}', *greedy).stdout
  assert from_run.startswith('ROMEO:') and len(from_run.rstrip('\n')) == len('ROMEO:') + 12
  run(emulator, 'flaxlm-export', f'--workdir={workdir}', f'--output={exported}')
  assert {'export/config.json', 'export/tokenizer.json'} <= set(emulator.objects(bucket, 'export/'))
  assert run(emulator, 'flaxlm-sample', f'--params={exported}', *greedy).stdout == from_run  # The same params.

  run(emulator, 'flaxlm-plot', f'--workdir={workdir}')
  assert emulator.read(bucket, 'run/loss.png').startswith(b'\x89PNG')
  count = run(emulator, 'flaxlm-tokenizer', 'count', f'--tokenizer={workdir}/tokenizer.json', '--text=ROMEO')
  assert count.stdout.startswith('5 tokens')


def test_a_bucket_that_does_not_exist_is_refused_and_not_created(emulator):
  before = emulator.buckets()
  result = commands.run(command('flaxlm-train'), '--config=tiny', '--workdir=gs://no-such-bucket/run', cwd=REPO,
                        env=emulator.env)
  assert_one_line_error(result, 'gs://no-such-bucket, which does not exist')
  assert emulator.buckets() == before
