"""A test helper: errors must come from timm-cct itself, at its boundary, not from deep inside torch or timm."""
from pathlib import Path

import pytest

import timm_cct

PACKAGE = Path(timm_cct.__file__).parent


def raises_from_package(exc_type, fn, *fragments: str) -> str:
    """Run ``fn``; require ``exc_type`` raised by timm_cct's own code, naming every fragment; return the message."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} missing from {message!r}'
    raiser = Path(info.traceback[-1].path)
    assert PACKAGE in raiser.parents, f'raised in {raiser}, not by timm_cct'
    return message
