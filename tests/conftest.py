"""Shared test set-up."""

# ---- Local Hub: runs before any Hugging Face import ----
# huggingface_hub and datasets read HF_ENDPOINT (and the other variables) when they are imported, so the server
# starts and the environment is set here, at collection time, before any test module imports them.
import atexit
import os
import shutil
import tempfile

import pytest
from hub_server import HubServer

_hub_dir = tempfile.mkdtemp(prefix="dtm-test-hub-")
_hub = HubServer(os.path.join(_hub_dir, "storage"))
os.environ.update({
    "HF_ENDPOINT": _hub.start(),
    "HF_HUB_DISABLE_XET": "1",  # with xet, uploads go to a xet-write-token endpoint this server does not have
    "HF_TOKEN": "hf_dummy_test_token",  # the clients refuse to push without a token
    "HF_HOME": os.path.join(_hub_dir, "hf_home"),  # never touch the user's cache or token
    "HF_DATASETS_CACHE": os.path.join(_hub_dir, "hf_home", "datasets"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
})
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)  # the local Hub is always reachable


@atexit.register
def _stop_hub():
    _hub.stop()
    shutil.rmtree(_hub_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The local Hub every Hugging Face client in the tests talks to (see tests/hub_server.py)."""
    return _hub


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    """The battery's inputs, made once: a tiny base, its data split in 2 clusters, two sub-models, a training recipe
    (tests/battery_helpers.py). Tests copy what they change; the battery checks that nothing here is touched."""
    from battery_helpers import make_world

    return make_world(tmp_path_factory.mktemp("world"))
