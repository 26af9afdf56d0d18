import random, string, torch, sys, time
import torch.nn.functional as F
from lighthouse.model.presets import model_preset
from lighthouse.model.llama import LlamaForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
preset, lr, steps, L, B = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = LlamaForCausalLM(model_preset(preset)); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1, betas=(0.9,0.95))
rng = random.Random(1)
A = string.ascii_lowercase+string.digits
def echo(n):
    out = ""
    while len(out) < n:
        s = "".join(rng.choices(A, k=rng.randint(8, 64)))
        out += s + ". " + s + ". "
    return [1, *out.encode()][:n]
def indtest():
    s = "".join(rng.choices(A, k=100))
    ids = torch.tensor([[1, *(s+s).encode()]])
    with torch.no_grad():
        lg = m(ids, dense=True).logits[0,:-1]
    ce = F.cross_entropy(lg, ids[0,1:], reduction='none')
    return ce[:99].mean().item(), ce[103:].mean().item()
t0=time.time()
for step in range(steps+1):
    ids = torch.tensor([echo(L) for _ in range(B)])
    logits = m(ids, dense=True, logits_to_keep=ids.shape[1]).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1,2), ids[:,1:])
    opt.zero_grad(); ce.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    if step%250==0: print(step, 'loss %.3f' % ce.item(), 'induction first/second %.3f %.3f' % indtest(), '%.0fs'%(time.time()-t0), flush=True)
