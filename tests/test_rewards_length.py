"""DAPO's overlong penalty and its settings, verl's `overlong_buffer_cfg`."""

import pytest

from mixed_r1_verl.rewards.length import OverlongBuffer, overlong_penalty


def test_the_penalty_falls_linearly_over_the_buffer_to_minus_the_factor_at_the_cap():
    cap, buffer = 100, 20
    assert [overlong_penalty(length, cap, buffer, 1.0) for length in (0, 79, 80, 85, 90, 100)] == [
        0.0, 0.0, 0.0, -0.25, -0.5, -1.0,
    ]  # fmt: skip
    assert overlong_penalty(90, cap, buffer, 0.5) == -0.25
    assert overlong_penalty(10, 10, buffer, 1.0) == -0.5, "a cap inside the buffer: counted from token 0"


def test_overlong_buffer_cfg_reads_verls_keys_and_is_off_unless_enabled():
    assert OverlongBuffer.from_options(None, 512) is None
    assert OverlongBuffer.from_options({"enable": False, "len": 4096}, 512) is None, "off: len not checked"
    buffer = OverlongBuffer.from_options({"enable": True, "len": 128, "penalty_factor": 0.5, "log": True}, 512)
    assert buffer == OverlongBuffer(128, 0.5, True)
    assert buffer.penalty(512, 512) == -0.5
    assert OverlongBuffer.from_options({"enable": True, "len": 512}, 512) == OverlongBuffer(512, 1.0, False)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"enable": True, "length": 64}, r"overlong_buffer_cfg.length is not one of its keys \(enable, len,"),
        ({"enable": "yes", "len": 64}, "overlong_buffer_cfg.enable must be true or false, got 'yes'"),
        ({"enable": True}, r"overlong_buffer_cfg.len must be a whole number of tokens from 1 to the response"),
        ({"enable": True, "len": 513}, "got 513"),
        ({"enable": True, "len": 0}, "got 0"),
        ({"enable": True, "len": 64.0}, "got 64.0"),
        ({"enable": True, "len": 64, "penalty_factor": -1}, "penalty_factor must be a number of 0 or more, got -1"),
        ({"enable": True, "len": 64, "penalty_factor": "1"}, "got '1'"),
        ({"enable": True, "len": 64, "log": 1}, "overlong_buffer_cfg.log must be true or false, got 1"),
    ],
)
def test_a_wrong_overlong_buffer_cfg_is_refused_naming_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        OverlongBuffer.from_options(options, 512)
