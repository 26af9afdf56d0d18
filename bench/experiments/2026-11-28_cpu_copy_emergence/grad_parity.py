import torch, tempfile
import torch.nn.functional as F
from lighthouse.model.presets import model_preset
from lighthouse.model.llama import LlamaForCausalLM
from lighthouse.checkpoint import save_checkpoint
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
m = LlamaForCausalLM(model_preset('tiny')); m.train()
d = tempfile.mkdtemp()
save_checkpoint(m, None, d)
hf = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager"); hf.train()
ids = torch.randint(0, 256, (2, 300))
l1 = F.cross_entropy(m(ids, dense=True, logits_to_keep=300).logits[:, :-1].transpose(1,2), ids[:,1:])
l2 = F.cross_entropy(hf(ids).logits[:, :-1].transpose(1,2), ids[:,1:])
l1.backward(); l2.backward()
print("loss", l1.item(), l2.item())
hp = dict(hf.named_parameters())
for n,p in m.named_parameters():
    q = hp.get(n) if n in hp else hp.get("model."+n.removeprefix("model."))
    if q is None: print("missing", n); continue
    print(n, "%.3e %.3e rel %.2e" % (p.grad.norm(), q.grad.norm(), (p.grad-q.grad).norm()/q.grad.norm()))
