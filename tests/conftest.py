import os

import pytest


def pytest_configure(config):
    # keep atlas caches of the test run out of the user's home
    os.environ.setdefault("GLYPH_RT_CACHE", str(config.rootpath / ".pytest_cache" / "glyph_rt"))


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
