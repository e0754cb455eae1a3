"""The CPU description every result records, read from /proc/cpuinfo texts of known CPUs."""

from slmops import machine
from slmops.bench.system import system_info
from slmops.machine import cpu_summary, describe_cpu, parse_cpuinfo

# Two processors each, as the kernel writes them; flags trimmed to a realistic subset.
X86_COMMON = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
    "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 "
    "pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm sse4a "
    "fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec"
)
ZEN3 = X86_COMMON + " umip vaes vpclmulqdq rdpid fsrm"
ZEN4 = (
    X86_COMMON + " avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi umip "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm"
)
SAPPHIRE_RAPIDS = (
    X86_COMMON + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 vaes "
    "avx512_vnni avx512_fp16 avx_vnni amx_bf16 amx_tile amx_int8"
)
ARM_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"


def x86_cpuinfo(vendor: str, model: str, flags: str) -> str:
    return "".join(
        f"processor\t: {index}\nvendor_id\t: {vendor}\ncpu family\t: 25\nmodel\t\t: 1\n"
        f"model name\t: {model}\nstepping\t: 1\nflags\t\t: {flags}\nbogomips\t: 4900.00\n\n"
        for index in range(2)
    )


def arm_cpuinfo(features: str, part: str) -> str:
    return "".join(
        f"processor\t: {index}\nBogoMIPS\t: 243.75\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        f"CPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
        for index in range(2)
    )


def test_an_avx2_only_epyc_is_zen_3_class_avx2():
    cpu = parse_cpuinfo(x86_cpuinfo("AuthenticAMD", "AMD EPYC 7B13 64-Core Processor", ZEN3))
    assert cpu.model == "AMD EPYC 7B13 64-Core Processor" and cpu.vendor == "AMD"
    assert cpu.flags == ("avx", "avx2", "fma", "f16c")
    assert cpu.instruction_set == "AVX2" and cpu.microarchitecture == "Zen 3"
    assert cpu.label == "AMD EPYC (Zen 3 class), AVX2"
    assert cpu.summary() == "AMD EPYC (Zen 3 class), AVX2 (AMD EPYC 7B13 64-Core Processor; flags: avx avx2 fma f16c)"


def test_an_avx512_vnni_epyc_is_zen_4_class_avx512_vnni():
    cpu = parse_cpuinfo(x86_cpuinfo("AuthenticAMD", "AMD EPYC", ZEN4))
    assert {"avx512f", "avx512_vnni", "avx512_bf16", "avx512vbmi", "avx2", "fma"} <= set(cpu.flags)
    assert not {"avx_vnni", "amx_tile", "amx_int8"} & set(cpu.flags)
    assert cpu.label == "AMD EPYC (Zen 4 class), AVX-512 VNNI"
    # the model name adds nothing to the label here, so the summary does not repeat it
    assert cpu.summary().startswith("AMD EPYC (Zen 4 class), AVX-512 VNNI (flags: avx avx2 fma f16c avx512f")


def test_a_hypervisor_that_hides_avx512_gives_the_class_its_kernels_see():
    masked = " ".join(flag for flag in ZEN4.split() if not flag.startswith("avx512"))
    assert parse_cpuinfo(x86_cpuinfo("AuthenticAMD", "AMD EPYC", masked)).label == "AMD EPYC (Zen 3 class), AVX2"


def test_an_intel_xeon_with_amx():
    cpu = parse_cpuinfo(x86_cpuinfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8488C", SAPPHIRE_RAPIDS))
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx_vnni", "avx512_fp16"} <= set(cpu.flags)
    assert cpu.label == "Intel Xeon (Sapphire Rapids class), AMX INT8"


def test_an_arm_neoverse_without_a_model_name():
    cpu = parse_cpuinfo(arm_cpuinfo(ARM_FEATURES, "0xd0c"))
    assert cpu.architecture == "aarch64" and cpu.vendor == "ARM"
    assert cpu.flags == ("asimd", "asimddp")
    assert cpu.label == "ARM Neoverse N1, NEON dot product"
    sve = parse_cpuinfo(arm_cpuinfo(ARM_FEATURES + " sve i8mm bf16 sve2", "0xd4f"))
    assert sve.label == "ARM Neoverse V2, NEON I8MM, SVE2"


def test_no_cpuinfo_still_describes_something(monkeypatch):
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    cpu = parse_cpuinfo("", "riscv64")
    assert cpu.model == "riscv64" and cpu.flags == () and cpu.label == "riscv64, instruction sets unknown"
    assert cpu_summary(cpu.to_json()) == "riscv64, instruction sets unknown (flags: none of note)"


def test_this_machine_is_described_once_and_in_the_bench_system_block():
    cpu = describe_cpu()
    assert describe_cpu() is cpu
    assert cpu.label and cpu.model
    system = system_info()
    assert system["cpu"] == cpu.model and system["cpu_info"] == cpu.to_json()
    assert isinstance(system["cpu_info"]["flags"], list)
