"""The CPU's name and flags as benchmark reports and kernel choices read them."""
from admpff.runtime.cpu_info import cpu_flags, cpu_model

X86 = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu avx512_vnni amx_int8 amx_bf16\n"
JETSON = "processor\t: 0\nFeatures\t: fp asimd asimddp\n\nHardware\t: NVIDIA Orin\n"


def test_x86_name_and_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(X86)
    assert cpu_model(str(f)) == "Intel(R) Xeon(R) Processor"
    assert {"avx512_vnni", "amx_int8"} <= cpu_flags(str(f)) and "amx" not in cpu_flags(str(f))


def test_arm_board_name_and_features(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(JETSON)
    assert cpu_model(str(f)) == "NVIDIA Orin"
    assert "asimddp" in cpu_flags(str(f))


def test_missing_cpuinfo_gives_a_name_and_no_flags(tmp_path):
    assert cpu_model(str(tmp_path / "none")) and cpu_flags(str(tmp_path / "none")) == frozenset()
