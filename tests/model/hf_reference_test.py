#!/usr/bin/env python3
"""Checks tunefleet's decoder against an independent PyTorch implementation
that follows Hugging Face transformers' Phi-3 / Llama / Mistral modeling code
(RMSNorm, rotate-half rotary with longrope / llama3 / linear scaling, GQA,
sliding window, fused Phi-3 projections, PEFT LoRA with rsLoRA).

It writes some models itself (safetensors without alignment padding, F32 and
BF16, tied embeddings) and PEFT adapters the way PEFT names them, so the C++
readers also meet files they did not write.

Usage: hf_reference_test.py PATH/TO/tunefleet-model   (needs python3 with torch)
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
NAMES = {v: k for k, v in DTYPES.items()}


def read_safetensors(path):
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = bytearray(data[8 + n + begin:8 + n + end])
        t = torch.frombuffer(raw, dtype=DTYPES[info["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out


def write_safetensors(path, tensors, dtype=torch.float32):
    """No padding after the header: tensors land misaligned on purpose."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.to(dtype).contiguous()
        raw = t.view(torch.int16).numpy().tobytes() if t.element_size() == 2 else t.numpy().tobytes()
        header[name] = {"dtype": NAMES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def rope(cfg, seq_len):
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    dim = int(hd * cfg.get("partial_rotary_factor", 1.0))
    base = cfg.get("rope_theta", 10000.0)
    shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv = 1.0 / (base ** shape)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    scale = 1.0
    if kind in ("longrope", "su"):
        orig = cfg["original_max_position_embeddings"]
        ext = torch.tensor(rs["long_factor"] if seq_len > orig else rs["short_factor"], dtype=torch.float32)
        inv = 1.0 / (ext * base ** shape)
        factor = cfg["max_position_embeddings"] / orig
        scale = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    elif kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv, scale


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def reference_logits(model_dir, ids, adapter_dir=None):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    lora, scaling = {}, 0.0
    if adapter_dir:
        acfg = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
        r, alpha = acfg["r"], acfg["lora_alpha"]
        scaling = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        for name, t in read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors")).items():
            module = name[len("base_model.model."):].replace(".lora_A.weight", "").replace(".lora_B.weight", "")
            lora.setdefault(module, {})["A" if ".lora_A." in name else "B"] = t

    def linear(x, module):
        y = x @ w[module + ".weight"].T
        if module in lora:
            y = y + (x @ lora[module]["A"].T @ lora[module]["B"].T) * scaling
        return y

    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // H
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)][None]
    inv, scale = rope(cfg, T)
    freqs = torch.arange(T).float()[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos() * scale, emb.sin() * scale
    rot = cos.shape[-1]
    q_idx, k_idx = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = k_idx <= q_idx
    if cfg.get("sliding_window"):
        allowed = allowed & (q_idx - k_idx < cfg["sliding_window"])
    bias = torch.zeros(T, T).masked_fill(~allowed, float("-inf"))

    def apply_rope(t):
        r, p = t[..., :rot], t[..., rot:]
        return torch.cat((r * cos + rotate_half(r) * sin, p), dim=-1)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"], eps)
        if cfg["model_type"] == "phi3":
            qkv = linear(h, p + "self_attn.qkv_proj")
            q, k, v = qkv[..., :H * hd], qkv[..., H * hd:(H + KV) * hd], qkv[..., (H + KV) * hd:]
        else:
            q, k, v = (linear(h, p + f"self_attn.{n}_proj") for n in "qkv")
        q = apply_rope(q.view(1, T, H, hd).transpose(1, 2))
        k = apply_rope(k.view(1, T, KV, hd).transpose(1, 2))
        v = v.view(1, T, KV, hd).transpose(1, 2)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) * hd ** -0.5 + bias, dim=-1) @ v
        x = x + linear(att.transpose(1, 2).reshape(1, T, H * hd), p + "self_attn.o_proj")
        h = rms(x, w[p + "post_attention_layernorm.weight"], eps)
        if cfg["model_type"] == "phi3":
            gate, up = linear(h, p + "mlp.gate_up_proj").chunk(2, dim=-1)
        else:
            gate, up = linear(h, p + "mlp.gate_proj"), linear(h, p + "mlp.up_proj")
        x = x + linear(up * torch.nn.functional.silu(gate), p + "mlp.down_proj")
    x = rms(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return (x @ head.T)[0]


def write_llama(d, model_type, dtype, **extra):
    os.makedirs(d)
    g = torch.Generator().manual_seed(5)
    h, H, KV, hd, inter, vocab = 32, 4, 2, 8, 48, 300
    cfg = {"model_type": model_type, "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": 2,
           "num_attention_heads": H, "num_key_value_heads": KV, "vocab_size": vocab, "rms_norm_eps": 1e-5,
           "max_position_embeddings": 256, "hidden_act": "silu"}
    cfg.update(extra)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.2
    t = {"model.embed_tokens.weight": rnd(vocab, h), "model.norm.weight": 1 + rnd(h)}
    for i in range(2):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + rnd(h), p + "post_attention_layernorm.weight": 1 + rnd(h),
                  p + "self_attn.q_proj.weight": rnd(H * hd, h), p + "self_attn.k_proj.weight": rnd(KV * hd, h),
                  p + "self_attn.v_proj.weight": rnd(KV * hd, h), p + "self_attn.o_proj.weight": rnd(h, H * hd),
                  p + "mlp.gate_proj.weight": rnd(inter, h), p + "mlp.up_proj.weight": rnd(inter, h),
                  p + "mlp.down_proj.weight": rnd(h, inter)})
    if not cfg.get("tie_word_embeddings"):
        t["lm_head.weight"] = rnd(vocab, h)
    write_safetensors(os.path.join(d, "model.safetensors"), t, dtype)
    if dtype != torch.float32:  # the reference computes in fp32 from the rounded weights
        pass


def write_peft_adapter(d, model_dir, modules, r, alpha, rslora):
    os.makedirs(d)
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    w = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    g = torch.Generator().manual_seed(11)
    t = {}
    for i in range(cfg["num_hidden_layers"]):
        for m in modules:
            parent = "mlp" if m in ("gate_up_proj", "gate_proj", "up_proj", "down_proj") else "self_attn"
            out, inp = w[f"model.layers.{i}.{parent}.{m}.weight"].shape
            base = f"base_model.model.model.layers.{i}.{parent}.{m}"
            t[base + ".lora_A.weight"] = torch.randn(r, inp, generator=g) * 0.1
            t[base + ".lora_B.weight"] = torch.randn(out, r, generator=g) * 0.1
    json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "lora_dropout": 0.05,
               "target_modules": modules, "bias": "none", "use_rslora": rslora, "use_dora": False,
               "fan_in_fan_out": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}},
              open(os.path.join(d, "adapter_config.json"), "w"))
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), t)


def main():
    tool = sys.argv[1]
    torch.set_num_threads(2)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        def path(*p):
            return os.path.join(tmp, *p)

        subprocess.run([tool, "init-tiny", "--out", path("phi3"), "--seed", "3", "--hidden", "64", "--heads", "4",
                        "--kv_heads", "4", "--intermediate", "96"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([tool, "init-tiny", "--out", path("phi3long"), "--seed", "4", "--long_context",
                        "--original_max_position", "8"], check=True, stdout=subprocess.DEVNULL)
        write_llama(path("llama3"), "llama", torch.float32, rope_theta=500000.0, tie_word_embeddings=True,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        write_llama(path("llama_linear"), "llama", torch.float32, rope_scaling={"type": "linear", "factor": 2.0})
        write_llama(path("mistral"), "mistral", torch.bfloat16, sliding_window=4, rope_theta=1000000.0)
        write_peft_adapter(path("phi3_adapter"), path("phi3"), ["qkv_proj", "down_proj"], 4, 8, False)
        write_peft_adapter(path("llama_adapter"), path("llama3"), ["q_proj", "v_proj", "up_proj"], 2, 16, True)

        ids12 = [1, 17, 250, 3, 99, 42, 7, 8, 120, 5, 61, 200]
        cases = [("phi3", "phi3", ids12, None), ("phi3 longrope, long", "phi3long", ids12, None),
                 ("phi3 longrope, short", "phi3long", ids12[:6], None), ("llama3 scaling, GQA, tied", "llama3", ids12, None),
                 ("llama linear scaling", "llama_linear", ids12, None), ("mistral bf16, window 4", "mistral", ids12, None),
                 ("phi3 + PEFT adapter", "phi3", ids12, "phi3_adapter"),
                 ("llama + rsLoRA PEFT adapter", "llama3", ids12, "llama_adapter")]
        for name, model, ids, adapter in cases:
            out = path("logits.safetensors")
            cmd = [tool, "logits", path(model), "--ids", ",".join(map(str, ids)), "--out", out]
            if adapter:
                cmd += ["--adapter", path(adapter)]
            subprocess.run(cmd, check=True)
            got = read_safetensors(out)["logits"]
            want = reference_logits(path(model), ids, path(adapter) if adapter else None)
            err = (got - want).abs().max().item()
            ok = got.shape == want.shape and err <= 1e-4
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: max |diff| {err:.2e} (scale {want.abs().max().item():.2f})")
    if failures:
        sys.exit(f"{failures} case(s) differ from the reference")


if __name__ == "__main__":
    main()
