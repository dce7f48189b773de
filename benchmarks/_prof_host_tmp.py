import cProfile, pstats, sys, torch, io
sys.path.insert(0, ".")
from qvdp import varlen_attention
from qvdp.ops.attention import build_block_map, attention_config
T, H, D = 14080, 16, 64
lens = [3520] * 4
qkv = torch.randn(T, 3, H, D, device="cuda", dtype=torch.bfloat16)
cu = torch.tensor([0, 3520, 7040, 10560, 14080], dtype=torch.int32, device="cuda")
ang = torch.rand(T, 32, device="cuda") * 40; ang = torch.cat([ang, ang], -1)
cos, sin = ang.cos().contiguous(), ang.sin().contiguous()
q, k, v = qkv.unbind(1)
bm = build_block_map(cu, T, 64)
fn = lambda: varlen_attention(q, k, v, cu, 3520, cos=cos, sin=sin, validate=False, block_map=bm)
for _ in range(20): fn()
torch.cuda.synchronize()
pr = cProfile.Profile()
torch.cuda._sleep(int(2e9))
pr.enable()
for _ in range(200): fn()
pr.disable()
torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
