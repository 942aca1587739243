"""Make the outside oracle of ``ssm_ref.MambaLM`` (run once; the tests need neither torch nor
transformers).

Where torch, transformers and safetensors are installed::

    python tests/data/make_mamba_lm_oracle.py

It builds a tiny, randomly initialised ``transformers.MambaForCausalLM`` (two layers), perturbs
the parameters that its initialization leaves at round values (A_log, D, the norms, the biases) so
that every one of them matters, and writes with transformers' own ``save_pretrained``:

- ``tests/data/mamba_lm/hf/``: ``config.json`` + ``model.safetensors`` in transformers' format;
- ``tests/data/mamba_lm/official/``: the same weights under ``mamba_ssm``'s names
  (``backbone.embedding.weight``; untied head ``lm_head.weight``) with a ``mamba_ssm``-style ``config.json``
  (d_model, n_layer, ssm_cfg, ...), written by this script from the same tensors;
- ``tests/data/mamba_lm/oracle.npz``: ``input_ids`` (2, 7), transformers' ``logits`` (2, 7, V)
  in float32, and its greedy continuation ``generated`` (2, 7 + 8) from ``model.generate``.
"""
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "mamba_lm"


def main():
    # imported here: pytest collects this folder (doctests) where torch is not installed
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=96, hidden_size=32, state_size=8, num_hidden_layers=2,
                      expand=2, conv_kernel=4, time_step_rank="auto", use_bias=False,
                      use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=False,
                      layer_norm_epsilon=1e-5, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    model = MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", ".D", "norm.weight", "norm_f.weight", "conv1d.bias",
                              "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
            if name.endswith(("embeddings.weight", "lm_head.weight")):
                p.normal_(0.0, 1.0)  # the default init (std 0.02) makes every logit near zero
    (OUT / "hf").mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT / "hf", safe_serialization=True)

    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    official = {}
    for k, v in sd.items():
        official[k.replace("backbone.embeddings.", "backbone.embedding.")] = v
    (OUT / "official").mkdir(parents=True, exist_ok=True)
    save_file(official, str(OUT / "official" / "model.safetensors"))
    with open(OUT / "official" / "config.json", "w") as f:
        json.dump({"d_model": 32, "n_layer": 2, "vocab_size": 96,
                   "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2},
                   "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                   "pad_vocab_size_multiple": 8, "tie_embeddings": False}, f, indent=2)

    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits.float().numpy()
        gen = model.generate(ids, max_new_tokens=8, do_sample=False,
                             attention_mask=torch.ones_like(ids)).numpy()
    np.savez(OUT / "oracle.npz", input_ids=ids.numpy(), logits=logits, generated=gen)
    print("wrote", OUT, "logits", logits.shape, "generated", gen.tolist())


if __name__ == "__main__":
    main()
