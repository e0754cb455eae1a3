"""The CPU a result was measured on: its model, the instruction sets kernels use, and a short label.

onnxruntime and llama.cpp pick their matrix kernels by instruction set (AVX2, AVX-512,
VNNI, AMX on x86; the NEON dot product, I8MM and SVE on ARM), so one model decodes at
different speeds, and at a different ratio to llama.cpp, on two CPUs of the same vendor.
Every benchmark and report records this description beside its figures.

The flags are read from ``/proc/cpuinfo``; lscpu prints the same ones. A virtual machine
shows only the flags its hypervisor passes through, which are the ones its kernels can use,
so the microarchitecture is named as a class ("Zen 4 class"): the oldest one with these flags.
"""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import asdict, dataclass

CPUINFO = "/proc/cpuinfo"

# The flags matrix kernels dispatch on, as /proc/cpuinfo names them.
X86_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512vbmi",
    "avx512_vbmi2",
    "avx512_fp16",
    "avx_vnni",
    "avx_vnni_int8",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "amx_fp16",
)
# ARM's, with the names people know them by.
ARM_FLAGS = (
    ("asimd", "NEON"),
    ("asimddp", "dot product"),
    ("i8mm", "I8MM"),
    ("bf16", "BF16"),
    ("sve", "SVE"),
    ("sve2", "SVE2"),
    ("sme", "SME"),
)

# Newest first: the first class whose flags a CPU has all of names it.
AMD_CLASSES = (
    ("Zen 5", {"avx512f", "avx_vnni"}),  # Zen 5 added the VEX-encoded VNNI to Zen 4's AVX-512
    ("Zen 4", {"avx512f"}),
    ("Zen 3", {"avx2", "vaes"}),
    ("Zen 2", {"avx2", "clwb"}),
    ("Zen", {"avx2"}),
)
INTEL_CLASSES = (
    ("Granite Rapids", {"amx_fp16"}),
    ("Sapphire Rapids", {"amx_tile"}),
    ("Ice Lake", {"avx512_vnni", "avx512vbmi"}),
    ("Cascade Lake", {"avx512_vnni"}),
    ("Skylake-SP", {"avx512f"}),
    ("Alder Lake", {"avx_vnni"}),  # hybrid cores: AVX-VNNI without AVX-512
    ("Haswell", {"avx2", "fma"}),
)
# ARM's own cores by "CPU part" (implementer 0x41), for CPUs whose /proc/cpuinfo has no model name.
ARM_PARTS = {
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse N1",
    "0xd40": "Neoverse V1",
    "0xd49": "Neoverse N2",
    "0xd4f": "Neoverse V2",
}
VENDORS = {"AuthenticAMD": "AMD", "GenuineIntel": "Intel", "0x41": "ARM", "0xc0": "Ampere", "0x61": "Apple"}
BRANDS = ("EPYC", "Ryzen", "Threadripper", "Opteron", "Xeon", "Core", "Pentium", "Celeron", "Atom")


@dataclass(frozen=True)
class CpuInfo:
    """What a result needs to say about the CPU it was measured on.

    Attributes:
        model: the model name as the kernel reports it, e.g. "AMD EPYC 9R14 96-Core Processor".
        vendor: "AMD", "Intel", "ARM", ... (the raw vendor id when unknown).
        architecture: "x86_64" or "aarch64".
        flags: the instruction-set flags matrix kernels use that this CPU has, as /proc/cpuinfo
            names them, e.g. ["avx2", "fma", "avx512f", "avx512_vnni"].
        instruction_set: the most capable of them for int4/int8 matrix products, e.g. "AVX-512 VNNI".
        microarchitecture: the oldest microarchitecture with these flags, e.g. "Zen 4"; None if unknown.
        label: a short name for tables and headings, e.g. "AMD EPYC (Zen 4 class), AVX-512 VNNI".
    """

    model: str
    vendor: str
    architecture: str
    flags: tuple[str, ...]
    instruction_set: str
    microarchitecture: str | None
    label: str

    def to_json(self) -> dict:
        data = asdict(self)
        data["flags"] = list(self.flags)
        return data

    def summary(self) -> str:
        """One line for reports: the label, the model name, and the flags."""
        return cpu_summary(self.to_json())


def cpu_summary(cpu_info: dict) -> str:
    """The one-line summary of a CPU recorded in a report (``CpuInfo.to_json()``)."""
    flags = " ".join(cpu_info.get("flags") or []) or "none of note"
    model = "" if cpu_info["label"].startswith(cpu_info["model"]) else f"{cpu_info['model']}; "
    return f"{cpu_info['label']} ({model}flags: {flags})"


def key() -> str:
    """This CPU's model and flags as one string: what a figure measured here is kept under."""
    cpu = describe_cpu()
    return f"{cpu.model} [{' '.join(sorted(cpu.flags))}]"


@functools.lru_cache(maxsize=1)
def describe_cpu() -> CpuInfo:
    """The CPU this process runs on (read once)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def parse_cpuinfo(text: str, architecture: str = "") -> CpuInfo:
    """Describe the CPU of a ``/proc/cpuinfo`` text (its first processor; they are all alike).

    Args:
        text: the file's content.
        architecture: ``platform.machine()``, used when the text tells neither x86 nor ARM.
    """
    fields = _first_processor(text)
    if "flags" in fields or "vendor_id" in fields:
        return _x86(fields)
    if "Features" in fields or "CPU implementer" in fields:
        return _arm(fields)
    model = platform.processor() or architecture or "unknown CPU"
    return CpuInfo(model, "", architecture, (), "unknown", None, f"{model}, instruction sets unknown")


def _first_processor(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("Features"):
                break  # the first processor's block is complete
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def _x86(fields: dict[str, str]) -> CpuInfo:
    present = set(fields.get("flags", "").split())
    flags = tuple(flag for flag in X86_FLAGS if flag in present)
    vendor = VENDORS.get(fields.get("vendor_id", ""), fields.get("vendor_id", ""))
    model = fields.get("model name", "") or vendor or "x86 CPU"
    classes = {"AMD": AMD_CLASSES, "Intel": INTEL_CLASSES}.get(vendor, ())
    microarchitecture = next((name for name, needs in classes if needs <= present), None)
    instruction_set = _x86_instruction_set(present)
    return CpuInfo(
        model,
        vendor,
        "x86_64",
        flags,
        instruction_set,
        microarchitecture,
        _label(model, vendor, microarchitecture, instruction_set),
    )


def _x86_instruction_set(present: set[str]) -> str:
    if "amx_int8" in present:
        return "AMX INT8"
    if {"avx512f", "avx512_vnni"} <= present:
        return "AVX-512 VNNI"
    if "avx512f" in present:
        return "AVX-512"
    if {"avx2", "avx_vnni"} <= present:
        return "AVX2 + AVX-VNNI"
    for flag, name in (("avx2", "AVX2"), ("avx", "AVX")):
        if flag in present:
            return name
    return "no AVX"


def _arm(fields: dict[str, str]) -> CpuInfo:
    present = set(fields.get("Features", "").split())
    flags = tuple(flag for flag, _ in ARM_FLAGS if flag in present)
    implementer = fields.get("CPU implementer", "")
    vendor = VENDORS.get(implementer, implementer)
    part = ARM_PARTS.get(fields.get("CPU part", "")) if implementer == "0x41" else None
    model = fields.get("model name") or (
        f"ARM {part}" if part else f"{vendor or 'ARM'} CPU part {fields.get('CPU part', '?')}"
    )
    names = dict(ARM_FLAGS)
    instruction_set = next(
        (f"NEON {names[flag]}" for flag in ("i8mm", "asimddp") if flag in present),
        "NEON" if "asimd" in present else "no NEON",
    )
    vector = next((names[flag] for flag in ("sve2", "sve") if flag in present), None)
    if vector:
        instruction_set += f", {vector}"
    return CpuInfo(model, vendor, "aarch64", flags, instruction_set, None, f"{model}, {instruction_set}")


def _label(model: str, vendor: str, microarchitecture: str | None, instruction_set: str) -> str:
    brand = _brand(model, vendor)
    return (
        f"{brand} ({microarchitecture} class), {instruction_set}"
        if microarchitecture
        else f"{brand}, {instruction_set}"
    )


def _brand(model: str, vendor: str) -> str:
    """ "AMD EPYC 7B13 64-Core Processor" -> "AMD EPYC"; "Intel(R) Xeon(R) Platinum 8488C" -> "Intel Xeon"."""
    words = re.sub(r"\((R|TM|tm|r)\)", "", model).split()
    brand = next((word for word in words if word in BRANDS), None)
    if brand and vendor:
        return f"{vendor} {brand}"
    return " ".join(words) or vendor or "CPU"
