r"""Serves a Google Cloud Storage API on 127.0.0.1 until killed (for tests and dry runs).

  python tools/local_gcs.py --port=9023 --bucket=my-bucket --env_file=/tmp/gcs.env
  set -a; . /tmp/gcs.env; set +a    # then gs://my-bucket/... paths reach this server
  python -m dynpt.main --gin_file=pretrain/toy_cpu.gin --gin.RUN_DIR="'gs://my-bucket/run'"

The server is the `gcp-storage-emulator` package's (pinned in
requirements-test.txt), in memory: what it holds is gone when it stops. It
creates `--bucket`, and once it answers it writes to `--env_file` the
`KEY=VALUE` lines that point dynpt's two GCS clients at it:
- fsspec's `gcsfs`, which etils' `epath` (dynpt.fs, orbax's metadata) uses
  when `EPATH_USE_TF=false`: `STORAGE_EMULATOR_HOST`, anonymous access
  (`FSSPEC_GS_TOKEN=anon`), no listings cache (TensorStore writes objects
  that gcsfs would not know about) and none of gcsfs's calls to the storage
  control API, which the emulator lacks;
- TensorStore (checkpoint arrays): `TENSORSTORE_GCS_HTTP_URL` and a fixed
  token (`GOOGLE_AUTH_TOKEN_FOR_TESTING`), so neither client looks for
  credentials or a metadata server.
TensorFlow's own GCS client cannot be pointed at it (its endpoints are
compiled in): tf.data reads of a `gs://` DATA_DIR are not served here.
`--port=0` picks a free port (named in the env file). Only 127.0.0.1 listens.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socketserver
import sys
import tempfile
import threading

from absl import app, flags

_PORT = flags.DEFINE_integer("port", 0, "Port on 127.0.0.1; 0 picks a free one.")
_BUCKET = flags.DEFINE_string("bucket", None, "Bucket to create.", required=True)
_ENV_FILE = flags.DEFINE_string("env_file", None, "Where to write the KEY=VALUE lines.",
                                required=True)

HOST = "127.0.0.1"


def client_env(port: int, project: str = "local-gcs") -> dict[str, str]:
  """The environment that points gcsfs, etils/orbax and TensorStore at the server."""
  url = f"http://{HOST}:{port}"
  return {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "EPATH_USE_TF": "false",
      "FSSPEC_GS_TOKEN": "anon",
      "FSSPEC_GS_USE_LISTINGS_CACHE": "false",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "local-gcs",
      "GOOGLE_CLOUD_PROJECT": project,
      "NO_GCE_CHECK": "true",
  }


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
  """A thread per connection and a deep backlog.

  The emulator's own server reads one connection at a time with a backlog of
  5; TensorStore and gcsfs open more at once, and one idle connection would
  hold up the rest.
  """
  request_queue_size = 256
  daemon_threads = True

  def handle_error(self, request, client_address):
    if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
      return  # A client that went away (a killed trainer, a timed-out retry).
    super().handle_error(request, client_address)


def _add_generation_headers(emulator, objects) -> None:
  """Makes media downloads carry `x-goog-generation`, as GCS's do.

  TensorStore reads an object's generation from that header and refuses a
  download without it ("Malformed StorageGeneration"); the emulator sends
  the generation only in the object's JSON.
  """
  download = objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      obj = storage.get_file_obj(request.params["bucket_name"],
                                 request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])
      response["x-goog-stored-content-length"] = str(obj["size"])

  objects.download = download_with_generation  # `objects.get` calls it (?alt=media).
  for _, methods in emulator.HANDLERS:
    for method, handler in list(methods.items()):
      if handler is download:
        methods[method] = download_with_generation


def _serve(port: int, bucket: str, env_file: str) -> None:
  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.handlers import buckets, objects
  from gcp_storage_emulator.storage import Storage

  _add_generation_headers(emulator, objects)

  # A missing object (404) is ordinary traffic, not an error to print.
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  # In memory: nothing is written to disk (data_dir only has to be absolute).
  storage = Storage(use_memory_fs=True, data_dir=tempfile.gettempdir())
  buckets.create_bucket(bucket, storage)
  lock = threading.Lock()

  class Handler(emulator.RequestHandler):
    """The emulator's handler, one request at a time (its store is not made for
    concurrent writers); reading a request needs no lock."""

    def _locked(self, method):
      with lock:
        method(self)

    def do_GET(self):
      self._locked(emulator.RequestHandler.do_GET)

    def do_POST(self):
      self._locked(emulator.RequestHandler.do_POST)

    def do_PUT(self):
      self._locked(emulator.RequestHandler.do_PUT)

    def do_PATCH(self):
      self._locked(emulator.RequestHandler.do_PATCH)

    def do_DELETE(self):
      self._locked(emulator.RequestHandler.do_DELETE)

    def log_message(self, *unused):
      pass

  httpd = _Server((HOST, port), lambda *a, **k: Handler(storage, *a, **k))
  port = httpd.server_address[1]
  lines = "".join(f"{k}={v}\n" for k, v in client_env(port).items())
  tmp = f"{env_file}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(lines)
  os.replace(tmp, env_file)  # Readers see the whole file or none.
  print(f"serving gs://{bucket} at http://{HOST}:{port}; environment in {env_file}",
        flush=True)
  signal.signal(signal.SIGTERM, lambda *unused: sys.exit(0))
  try:
    httpd.serve_forever(poll_interval=0.2)
  finally:
    httpd.server_close()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _serve(_PORT.value, _BUCKET.value, _ENV_FILE.value)


if __name__ == "__main__":
  from dynpt import console

  console.setup(native=False)  # Loads no C++ library.
  console.run_app(main)
