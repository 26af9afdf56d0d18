import random, string, torch, sys, time
import torch.nn.functional as F
from lighthouse.model.presets import model_preset
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.train.data import SequenceStream
torch.manual_seed(0)
cfg = model_preset('tiny')
m = LlamaForCausalLM(cfg); m.train()
opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9,0.95))
st = SequenceStream(512, seed=0, tasks=("passkey",), fillers=tuple(sys.argv[1].split(",")))
rng = random.Random(1)
def indtest():
    s = "".join(rng.choices(string.ascii_lowercase+string.digits, k=127))
    ids = torch.tensor([[1, *(s+s).encode()]])
    with torch.no_grad():
        lg = m(ids, dense=True).logits[0,:-1]
    ce = F.cross_entropy(lg, ids[0,1:], reduction='none')
    return ce[:126].mean().item(), ce[130:].mean().item()
t0=time.time()
for step in range(401):
    b = st.batch(list(range(step*8, step*8+8)))
    ids, labels = b['input_ids'], b['labels']
    logits = m(ids, dense=True, logits_to_keep=ids.shape[1]).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1,2), labels[:,1:], ignore_index=-100)
    opt.zero_grad(); ce.backward(); torch.nn.utils.clip_grad_norm_(m.parameters(),1.0); opt.step()
    if step%50==0: print(step, 'loss %.3f' % ce.item(), 'induction first/second %.3f %.3f' % indtest(), '%.0fs'%(time.time()-t0), flush=True)
