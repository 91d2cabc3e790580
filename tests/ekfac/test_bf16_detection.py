"""bfloat16 units are read from the CPU's feature flags, not from oneDNN's "bf16 supported" (issue 18, item 10).

oneDNN says "supported" on AVX512 CPUs that only emulate bfloat16 (a [1024, 512] gram 19.6 ms in
bfloat16 against 4.4 ms in float32); ``compute_dtype: auto`` must pick float32 there.
"""

from __future__ import annotations

import pytest
import torch

from infra_pl.ekfac import precision
from infra_pl.ekfac.precision import bf16_detection, bf16_gram_speedup, cpu_bf16_units, cpu_flags, native_bf16

SKYLAKE_AVX512 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8175M CPU @ 2.50GHz
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512cd avx512bw avx512vl
bogomips\t: 5000.00
"""
COOPER_LAKE = SKYLAKE_AVX512.replace("avx512vl", "avx512vl avx512_bf16")
SAPPHIRE_RAPIDS = COOPER_LAKE.replace("avx512_bf16", "avx512_bf16 amx_bf16 amx_tile amx_int8")
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes sha512 sve asimddp bf16 i8mm\n"
GRAVITON2 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdhp asimddp\n"
HASWELL = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"


@pytest.mark.parametrize("text, native, words", [
    (SKYLAKE_AVX512, False, "emulated"),
    (COOPER_LAKE, True, "AVX512-BF16"),
    (SAPPHIRE_RAPIDS, True, "AMX-BF16"),
    (GRAVITON3, True, "Arm BF16"),
    (GRAVITON2, False, "lack bf16"),
    (HASWELL, False, "lack amx_bf16 or avx512_bf16"),
    ("", False, "no feature flags"),
    (None, False, "no /proc/cpuinfo"),
])
def test_cpuinfo_parser(text, native, words):
    found, reason = cpu_bf16_units(text)
    assert found is native and words in reason, reason


def test_flags_are_whole_words():
    assert "avx512_bf16" not in cpu_flags("flags : avx512_bf16x avx512f\n")
    assert cpu_bf16_units("flags : avx512_bf16x avx512f\n")[0] is False


@pytest.fixture
def fake_cpu(monkeypatch):
    """Pretend oneDNN says "bf16 supported" (as it does on any AVX512 CPU) and serve a chosen cpuinfo."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    monkeypatch.setattr(precision, "_mkldnn_bf16", lambda: True)

    class FakeOps:
        @staticmethod
        def _is_mkldnn_bf16_supported():
            return True

    monkeypatch.setattr(torch.ops, "mkldnn", FakeOps(), raising=False)

    def use(text):
        monkeypatch.setattr(precision, "read_cpuinfo", lambda path=precision.CPUINFO: text)
        bf16_detection.cache_clear()
    yield use
    bf16_detection.cache_clear()


def test_avx512_without_bf16_units_is_not_native_even_when_onednn_says_supported(fake_cpu):
    fake_cpu(SKYLAKE_AVX512)
    assert native_bf16("cpu") is False
    native, reason = bf16_detection("cpu")
    assert not native and "emulated" in reason


def test_amx_cpu_is_native(fake_cpu):
    fake_cpu(SAPPHIRE_RAPIDS)
    assert native_bf16("cpu") is True and "AMX-BF16" in bf16_detection("cpu")[1]


def test_units_unused_by_this_torch_build_are_not_native(fake_cpu, monkeypatch):
    fake_cpu(SAPPHIRE_RAPIDS)
    monkeypatch.setattr(precision, "_mkldnn_bf16", lambda: False)
    native, reason = bf16_detection("cpu")
    assert not native and "oneDNN" in reason


def test_other_devices_and_the_optional_measurement():
    assert native_bf16("meta") is False
    assert bf16_gram_speedup(64, 32, repeats=1) > 0
