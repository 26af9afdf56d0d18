import random, string, torch, sys, time
import torch.nn.functional as F
from lighthouse.model.presets import model_preset
from lighthouse.model.llama import LlamaForCausalLM
torch.manual_seed(0)
m = LlamaForCausalLM(model_preset(sys.argv[3] if len(sys.argv)>3 else 'tiny')); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=float(sys.argv[4]) if len(sys.argv)>4 else 3e-3, weight_decay=0.1, betas=(0.9,0.95))
rng = random.Random(1)
A = string.ascii_lowercase+string.digits
def echo(n):
    out = ""
    while len(out) < n:
        s = "".join(rng.choices(A, k=rng.randint(16, 128)))
        gap = "".join(rng.choices(A, k=rng.randint(0, 64))) if sys.argv[1]=="gap" else ""
        out += s + gap + s + " "
    return [1, *out.encode()][:n]
def indtest():
    s = "".join(rng.choices(A, k=127))
    ids = torch.tensor([[1, *(s+s).encode()]])
    with torch.no_grad():
        lg = m(ids, dense=True).logits[0,:-1]
    ce = F.cross_entropy(lg, ids[0,1:], reduction='none')
    return ce[:126].mean().item(), ce[130:].mean().item()
t0=time.time()
for step in range(int(sys.argv[2]) if len(sys.argv)>2 else 401):
    ids = torch.tensor([echo(512) for _ in range(8)])
    logits = m(ids, dense=True, logits_to_keep=ids.shape[1]).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1,2), ids[:,1:])
    opt.zero_grad(); ce.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    if step%100==0: print(step, 'loss %.3f' % ce.item(), 'induction first/second %.3f %.3f' % indtest(), '%.0fs'%(time.time()-t0), flush=True)
