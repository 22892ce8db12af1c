"""The machine a bench runs on: CPU, instruction sets, library versions, and the peak of each precision.

Peaks are computed from the CPU's ISA flags and its nominal clock (``cpu MHz`` in /proc/cpuinfo; virtual
machines report the base clock), per core per cycle, times the cores.  Assumed per core and cycle:

=================  ===========================  ===================================  ==========================
precision          Intel Xeon (AVX-512: 2 FMA    AMD EPYC Zen 4 (family 0x19: AVX-512   AMD EPYC Zen 5 (0x1A: full
                   units; AMX on Sapphire        on 256-bit datapaths)                  512-bit datapaths)
                   Rapids and later)
=================  ===========================  ===================================  ==========================
fp32 (FMA)         64 FLOP (2 x 16 lanes x 2)    32 FLOP                              64 FLOP
bf16               AMX 1024 FLOP; without AMX    avx512_bf16 (vdpbf16ps): 64 FLOP     128 FLOP
                   avx512_bf16: 128 FLOP
int8               AMX 2048 op; without AMX      avx512_vnni (vpdpbusd): 128 op       256 op
                   avx512_vnni: 256 op
=================  ===========================  ===================================  ==========================

A CPU without the bf16 or int8 instructions gets its fp32 peak for them (the libraries convert to fp32).
A row's fraction of peak is taken against the peak of the precision it ran (``peak_for``).
"""
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

from .. import __version__

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def peak_rss_mb() -> float:
    """This process's peak resident set size.  VmHWM belongs to the address space, so unlike ru_maxrss it
    does not inherit the parent's peak across fork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_info() -> dict:
    """model name, vendor, family, MHz and flags of the first CPU in /proc/cpuinfo."""
    info = {"cpu": platform.processor() or "unknown", "vendor": "", "family": None, "mhz": None, "flags": set()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and info["cpu"] in ("unknown", "x86_64", platform.processor()):
                info["cpu"] = value  # more telling than platform.processor() ("x86_64")
            elif key == "vendor_id" and not info["vendor"]:
                info["vendor"] = value
            elif key == "cpu family" and info["family"] is None:
                info["family"] = int(value)
            elif key == "cpu MHz" and info["mhz"] is None:
                info["mhz"] = float(value)
            elif key == "flags" and not info["flags"]:
                info["flags"] = set(value.split())
            elif not line.strip() and info["flags"]:
                break  # the first CPU is enough
    except (OSError, ValueError):
        pass
    return info


def per_cycle(vendor: str, family: int | None, flags: set[str]) -> tuple[dict[str, int], str]:
    """({precision: FLOP or op per core per cycle}, the assumption in words) from the ISA flags (see the table)."""
    amd = vendor == "AuthenticAMD"
    if "avx512f" in flags:
        width = 0.5 if amd and family is not None and family < 0x1A else 1.0  # Zen 4 runs AVX-512 on 256 bits
        fp32 = int(64 * width)
        kind = ("AMD Zen 4 (AVX-512 on 256-bit datapaths)" if width < 1 else
                "AMD Zen 5 (512-bit datapaths)") if amd else "Intel AVX-512, 2 FMA units"
    elif "avx2" in flags:
        fp32, width, kind = 32, 0.5, "AVX2, 2 FMA units"
    else:
        fp32, width, kind = 8, 0.0, "no AVX2"
    bf16 = 1024 if "amx_bf16" in flags else int(128 * width) if "avx512_bf16" in flags else fp32
    int8 = 2048 if "amx_int8" in flags else int(256 * width) if "avx512_vnni" in flags else fp32
    how = (f"{kind}: fp32 {fp32} FLOP/cycle (FMA); bf16 {bf16} FLOP/cycle "
           f"({'AMX' if 'amx_bf16' in flags else 'avx512_bf16' if 'avx512_bf16' in flags else 'as fp32'}); "
           f"int8 {int8} op/cycle ({'AMX' if 'amx_int8' in flags else 'avx512_vnni' if 'avx512_vnni' in flags else 'as fp32'})")
    return {"fp32": fp32, "bf16": bf16, "int8": int8}, how


def peak_for(precision: str) -> str | None:
    """Which peak a row's precision is measured against (None: a GPU precision, no CPU peak)."""
    return {"fp32": "fp32", "bf16": "bf16", "int8": "int8"}.get(precision)


def machine() -> dict:
    cpu = cpu_info()
    cores = os.cpu_count() or 1
    rates, how = per_cycle(cpu["vendor"], cpu["family"], cpu["flags"])
    ghz = (cpu["mhz"] or 0) / 1000
    info = {"cpu": cpu["cpu"], "vendor": cpu["vendor"], "cores": cores, "mhz": cpu["mhz"],
            "python": platform.python_version(), "certseg_rt": __version__,
            "isa": [f for f in ISA_FLAGS if f in cpu["flags"]],
            "peak_gflops": {p: round(cores * ghz * r, 1) for p, r in rates.items()},
            "peak_assumption": f"{cores} cores x {cpu['mhz']} MHz x per-cycle rates: {how}"}
    info["fp32_peak_gflops_estimate"] = info["peak_gflops"]["fp32"]
    for mod in ("numpy", "torch", "onnxruntime", "openvino"):
        try:
            module = __import__(mod)
            info[mod] = module.get_version().split("-")[0] if mod == "openvino" else module.__version__
        except ImportError:
            pass
    from .._ext_loader import EXTENSION_STATUS

    info["extension"] = EXTENSION_STATUS
    return info
