"""The pure translation's fast spellings against the library calls they stand for."""

from __future__ import annotations

import base64
import random

from proxy.translate.stream import new_id


def test_new_id_is_urlsafe_base64_of_randbytes() -> None:
    """Same characters, from the same generator state, as `urlsafe_b64encode(randbytes(22))[:29]`."""
    state = random.getstate()
    try:
        for seed in range(500):
            random.seed(seed)
            ours = new_id("chatcmpl-")
            random.seed(seed)
            reference = "chatcmpl-" + base64.urlsafe_b64encode(random.randbytes(22)).decode()[:29]
            assert ours == reference
    finally:
        random.setstate(state)
