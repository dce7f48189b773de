"""Loading and calling qvdp's opt-in CUTLASS shared objects (plain C symbols through ctypes, no torch ABI):
where the library is, whether it can run on a device and why not, per-device SM counts, cached
workspaces. Used by qvdp.ops.merger_gemm and qvdp.ops.qkv_rope_gemm."""
from __future__ import annotations

import ctypes
import os
from typing import Callable, Iterable, Optional

import torch


class CutlassLib:
    """One shared object `qvdp/<file_name>` (or the path in $<env_var>) exporting, per kernel configuration
    v in `variants`, the C functions `<name>_v<v>` of `symbols` ({name: (restype, argtypes)}); a stale
    build that lacks one is reported as not loadable."""

    def __init__(self, file_name: str, env_var: str, what: str, symbols: dict, variants: Iterable[int]):
        self.file_name, self.env_var, self.what = file_name, env_var, what
        self.symbols, self.variants = symbols, tuple(variants)
        self._lib = None
        self._error: Optional[str] = None
        self._why = {}
        self._sms = {}
        self._ws = {}

    def library(self):
        if self._lib is not None or self._error is not None:
            return self._lib
        path = os.environ.get(self.env_var) or os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                            self.file_name)
        if not os.path.exists(path):
            self._error = (f"{path} is not built (QVDP_BUILD_CUTLASS=1 python setup.py build_ext --inplace, "
                           f"with nvidia-cutlass installed)")
            return None
        try:
            lib = ctypes.CDLL(path)
            for v in self.variants:
                for name, (restype, argtypes) in self.symbols.items():
                    f = getattr(lib, f"{name}_v{v}")
                    f.restype, f.argtypes = restype, argtypes
        except (OSError, AttributeError) as e:  # a stale or foreign build
            self._error = f"{path} could not be loaded: {e}"
            return None
        self._lib = lib
        return lib

    def function(self, name: str, variant: int):
        """The loaded library's `<name>_v<variant>` (call library() or unavailable_reason() first)."""
        return getattr(self._lib, f"{name}_v{variant}")

    def unavailable_reason(self, device=None) -> Optional[str]:
        """None when the kernels can run on `device` (default: the current CUDA device), else why not."""
        if isinstance(device, torch.device) and device.index in self._why and self._lib is not None:
            return self._why[device.index]  # the common call: a device seen before
        if not torch.cuda.is_available():
            return "no CUDA device"
        if self.library() is None:
            return self._error
        dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        if idx not in self._why:  # once per device
            self._why[idx] = (None if torch.cuda.get_device_capability(idx) == (9, 0) else
                              f"{self.what} is built for sm_90a, this is {torch.cuda.get_device_name(idx)}")
        return self._why[idx]

    def available(self, device=None) -> bool:
        return self.unavailable_reason(device) is None

    def launch_context(self, device, key: tuple, workspace_bytes: Callable[[int], int]):
        """(SM count, workspace tensor or None, stream handle) for a launch on `device`; the workspace is
        cached per (device, key) and sized by workspace_bytes(sm_count)."""
        dev = device.index if device.index is not None else torch.cuda.current_device()
        sms = self._sms.get(dev)
        if sms is None:
            sms = self._sms[dev] = torch.cuda.get_device_properties(dev).multi_processor_count
        k = (dev, *key)
        if k not in self._ws:
            nbytes = workspace_bytes(sms)
            if len(self._ws) > 64:
                self._ws.clear()
            self._ws[k] = torch.empty(nbytes, dtype=torch.uint8, device=device) if nbytes else None
        return sms, self._ws[k], torch.cuda.current_stream(device).cuda_stream
