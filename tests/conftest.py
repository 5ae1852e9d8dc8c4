import os

# LiteLLM fetches a price map from the internet at import time unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import pytest  # noqa: E402

from tests.support.upstream import ScriptedUpstream  # noqa: E402


@pytest.fixture
def upstream():
    with ScriptedUpstream() as up:
        yield up
