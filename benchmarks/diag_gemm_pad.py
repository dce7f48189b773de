import torch
import sys
sys.path.insert(0, "benchmarks")
from _common import event_ms
T, H = 14080, 1152
bf = dict(device="cuda", dtype=torch.bfloat16)
g = torch.Generator(device="cuda").manual_seed(0)
h = torch.randn(T, H, generator=g, **bf)
res = {}
for N in (4304, 4352, 4224, 4480, 4608, 4096):
    w = torch.randn(N, H, generator=g, **bf) * 0.03
    b = torch.randn(N, generator=g, **bf)
    a = torch.randn(T, N, generator=g, **bf) * 0.1
    w2 = torch.randn(H, N, generator=g, **bf) * 0.015
    x = torch.randn(T, H, generator=g, **bf)
    f1 = lambda: torch._addmm_activation(b, h, w.t(), use_gelu=True)
    f1b = lambda: torch.addmm(b, h, w.t())
    f2 = lambda: x.addmm_(a, w2.t())
    for f in (f1, f1b, f2): f()
    t1 = min(event_ms(f1, 20) for _ in range(5)); t1b = min(event_ms(f1b, 20) for _ in range(5)); t2 = min(event_ms(f2, 20) for _ in range(5))
    fl = 2 * T * H * N
    print(f"N={N}: fc1+gelu {t1*1e3:.1f} us ({fl/t1/1e9:.0f} TF/s), fc1 bias only {t1b*1e3:.1f} us ({fl/t1b/1e9:.0f}), fc2 addmm_ K=N {t2*1e3:.1f} us ({fl/t2/1e9:.0f}); per-4304-useful fc1+fc2 {((t1+t2)*4304/N)*1e3:.1f} (scaled), raw sum {(t1+t2)*1e3:.1f}", flush=True)
# QKV and proj for reference
for N, K in ((3456, 1152), (1152, 1152)):
    w = torch.randn(N, K, generator=g, **bf) * 0.03; b = torch.randn(N, generator=g, **bf); a = torch.randn(T, K, generator=g, **bf)
    f = lambda: torch.addmm(b, a, w.t()); f()
    t = min(event_ms(f, 20) for _ in range(5)); print(f"N={N} K={K} addmm {t*1e3:.1f} us ({2*T*N*K/t/1e9:.0f} TF/s)")
