import random, string, torch, sys, time, copy
import torch.nn.functional as F
from lighthouse.model.presets import model_preset
from lighthouse.model.llama import LlamaForCausalLM
torch.manual_seed(0); torch.set_num_threads(1)
hidden, heads, layers, lr, steps, L, B, alpha, wd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8], float(sys.argv[9])
c = model_preset('tiny'); c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_hidden_layers, c.intermediate_size = hidden, heads, heads, layers, 3*hidden
m = LlamaForCausalLM(c); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd, betas=(0.9,0.95))
rng = random.Random(1)
A = string.digits if alpha == "digits" else string.ascii_lowercase+string.digits
def echo(n):
    out = ""
    while len(out) < n:
        s = "".join(rng.choices(A, k=rng.randint(8, 32)))
        out += s + "|" + s + "\n"
    return [1, *out.encode()][:n]
def indtest():
    s = "".join(rng.choices(A, k=24)); ids = torch.tensor([[1, *(s+"|"+s+"\n").encode()]*6]).view(1,-1)
    with torch.no_grad(): lg = m(ids, dense=True).logits[0,:-1]
    ce = F.cross_entropy(lg, ids[0,1:], reduction='none').view(6, 50)  # 1 BOS + 24 + | + 24 + \n = 51 per rep; approx
    return ce.mean().item()
t0=time.time()
for step in range(steps+1):
    ids = torch.tensor([echo(L) for _ in range(B)])
    logits = m(ids, dense=True, logits_to_keep=ids.shape[1]).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1,2), ids[:,1:], reduction='none')
    # loss on first vs second copy: positions after '|' are copies
    loss = ce.mean(); opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    if step%250==0:
        isrep = torch.zeros_like(ids, dtype=torch.bool)
        for bi in range(B):
            row = ids[bi].tolist(); inrep = False
            for i,t in enumerate(row):
                if t == ord('|'): inrep = True
                elif t == ord('\n'): inrep = False
                elif inrep: isrep[bi,i] = True
        r = isrep[:,1:]
        print(step, 'loss %.3f new %.3f copy %.3f' % (loss.item(), ce[~r].mean().item(), ce[r].mean().item()), '%.0fs'%(time.time()-t0), flush=True)
