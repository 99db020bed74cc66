"""The attnlm model in PyTorch, and its safetensors file format (versions 1 and 2).

This is the training-side implementation of the model function that the C
engine in model/ serves; docs/FORMAT.md describes both.  Parameter names are
the tensor names of the file, so `state_dict()` is what gets exported.

Where the attention's keys and values come from is `attn_kv`:
  "state": key and value of position i are the top-layer output h_i (version 1);
  "continuation": the key of position i is h_{i-1} (zeros for i = 0), the
      state *before* byte x_i was read, and its value is the embedding of x_i,
      so matching the present state against a past one returns the byte that
      followed it (version 2).

Attention weights are returned in band form [B, heads, T, W]: column c of row t
is the weight on position i = t - (W - 1) + c; columns with i < 0 are zero.
"""
import json
import math
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F

CELLS = ("elman", "gru", "lstm")
ATTENTIONS = ("additive", "dot", "cosine", "multihead")
ATTN_KVS = ("state", "continuation")
BYTE_VOCAB = 257
BOS_ID = 256


class Config:
    """Hyperparameters: exactly the structural metadata keys of a model file."""

    def __init__(self, cell="gru", attention="multihead", embed_dim=64, hidden=256,
                 layers=2, window=64, attn_dim=64, heads=4, vocab_size=BYTE_VOCAB, attn_kv="state"):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}")
        if attention == "multihead" and hidden % heads:
            raise ValueError("heads must divide hidden")
        if attn_kv not in ATTN_KVS:
            raise ValueError(f"attn_kv must be one of {ATTN_KVS}")
        self.attn_kv = attn_kv
        self.cell, self.attention = cell, attention
        self.embed_dim, self.hidden, self.layers = embed_dim, hidden, layers
        self.window, self.attn_dim, self.heads = window, attn_dim, heads
        self.vocab_size = vocab_size

    @property
    def context_dim(self):
        """Width of the attention's context: the values' (E for continuation), or H after multihead's out_proj."""
        return self.embed_dim if self.attn_kv == "continuation" and self.attention != "multihead" else self.hidden

    def metadata(self):
        # "state" models are written as version 1, byte for byte as before the option existed.
        md = {
            "format": "attnlm", "format_version": "1" if self.attn_kv == "state" else "2",
            "vocab_size": str(self.vocab_size), "embed_dim": str(self.embed_dim),
            "hidden": str(self.hidden), "layers": str(self.layers),
            "window": str(self.window), "cell": self.cell,
            "attention": self.attention, "tokenizer": "byte", "bos_id": str(BOS_ID),
        }
        if self.attention == "additive":
            md["attn_dim"] = str(self.attn_dim)
        if self.attention == "multihead":
            md["heads"] = str(self.heads)
        if self.attn_kv != "state":
            md["attn_kv"] = self.attn_kv
        return md

    @staticmethod
    def from_metadata(md):
        return Config(cell=md["cell"], attention=md["attention"],
                      embed_dim=int(md["embed_dim"]), hidden=int(md["hidden"]),
                      layers=int(md["layers"]), window=int(md["window"]),
                      attn_dim=int(md.get("attn_dim", 1)), heads=int(md.get("heads", 1)),
                      vocab_size=int(md["vocab_size"]), attn_kv=md.get("attn_kv", "state"))


def band_mask(T, window, device=None):
    """[T, T] bool, True where position t may NOT attend to position i."""
    t = torch.arange(T, device=device).unsqueeze(1)
    i = torch.arange(T, device=device).unsqueeze(0)
    return (i > t) | (i < t - window + 1)


def dense_to_band(dense, window):
    """[..., T, T] attention maps -> [..., T, W] band form (see module doc)."""
    T = dense.shape[-1]
    t = torch.arange(T).unsqueeze(1)
    i = t - (window - 1) + torch.arange(window).unsqueeze(0)  # [T, W]
    valid = i >= 0
    idx = i.clamp(min=0).expand(*dense.shape[:-1], window)
    return torch.gather(dense, -1, idx) * valid


def band_to_dense(band):
    """[..., T, W] band form -> [..., T, T] dense maps, zero outside the window."""
    T, W = band.shape[-2], band.shape[-1]
    dense = band.new_zeros(*band.shape[:-1], T)
    for c in range(W):
        off = W - 1 - c  # i = t - off
        if off >= T:
            continue
        rows = torch.arange(off, T)
        dense[..., rows, rows - off] = band[..., rows, c]
    return dense


class Additive(nn.Module):
    def __init__(self, hidden, attn_dim):
        super().__init__()
        self.query = nn.Linear(hidden, attn_dim, bias=False)
        self.key = nn.Linear(hidden, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, h, window, keys=None, values=None):
        # Scores in band form, [B, T, A, W] at most, never [B, T, T, A]: column c of
        # row t pairs q_t with k_i, i = t - (W - 1) + c, read from k padded by W - 1.
        keys = h if keys is None else keys
        values = h if values is None else values
        B, T, _ = h.shape
        q, k = self.query(h), self.key(keys)
        k_band = F.pad(k, (0, 0, window - 1, 0)).unfold(1, window, 1)  # [B, T, A, W]
        s = torch.einsum("btaw,a->btw", torch.tanh(q.unsqueeze(-1) + k_band), self.v.weight[0])
        offsets = torch.arange(window, device=h.device) - (window - 1)
        invalid = torch.arange(T, device=h.device).unsqueeze(1) + offsets < 0  # [T, W]
        alpha = torch.softmax(s.masked_fill(invalid, float("-inf")), -1)  # [B, T, W]
        # Band -> dense [B, T, T] (column t + c of a row padded by W - 1), then one product.
        cols = (torch.arange(T, device=h.device).unsqueeze(1) + torch.arange(window, device=h.device))
        dense = alpha.new_zeros(B, T, T + window - 1).scatter(-1, cols.expand(B, T, window), alpha)
        ctx = dense[..., window - 1:] @ values
        return ctx, alpha.unsqueeze(1)


class Dot(nn.Module):
    def forward(self, h, window, keys=None, values=None):
        keys = h if keys is None else keys
        s = h @ keys.transpose(1, 2) / math.sqrt(h.shape[-1])
        return _masked_context(s, h if values is None else values, window)


class Cosine(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1) * 5.0)

    def forward(self, h, window, keys=None, values=None):
        hn = F.normalize(h, dim=-1, eps=1e-8)
        kn = hn if keys is None else F.normalize(keys, dim=-1, eps=1e-8)
        s = self.scale * (hn @ kn.transpose(1, 2))
        return _masked_context(s, h if values is None else values, window)


def _masked_context(scores, values, window):
    mask = band_mask(values.shape[1], window, values.device)
    alpha = torch.softmax(scores.masked_fill(mask, float("-inf")), -1)  # [B, T, T]
    return alpha @ values, dense_to_band(alpha, window).unsqueeze(1)


class MultiheadKV(nn.Module):
    """Multi-head attention whose keys [.., H] and values [.., E] come from other rows
    than its queries (attn_kv "continuation"): torch.nn.MultiheadAttention's
    separate-projection form (kdim = H, vdim = E), with its parameter names."""

    def __init__(self, hidden, heads, vdim):
        super().__init__()
        self.heads = heads
        self.q_proj_weight = nn.Parameter(torch.empty(hidden, hidden))
        self.k_proj_weight = nn.Parameter(torch.empty(hidden, hidden))
        self.v_proj_weight = nn.Parameter(torch.empty(hidden, vdim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * hidden))
        self.out_proj = nn.Linear(hidden, hidden)
        for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, h, window, keys, values):
        B, T, H = h.shape
        N, bq, bk, bv = self.heads, *self.in_proj_bias.chunk(3)
        D = H // N
        q = F.linear(h, self.q_proj_weight, bq).view(B, T, N, D).transpose(1, 2)
        k = F.linear(keys, self.k_proj_weight, bk).view(B, T, N, D).transpose(1, 2)
        u = F.linear(values, self.v_proj_weight, bv).view(B, T, N, D).transpose(1, 2)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # [B, N, T, T]
        alpha = torch.softmax(s.masked_fill(band_mask(T, window, h.device), float("-inf")), -1)
        ctx = self.out_proj((alpha @ u).transpose(1, 2).reshape(B, T, H))
        return ctx, dense_to_band(alpha, window)


class AttnLM(nn.Module):
    def __init__(self, cfg, dropout=0.0):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        rnn = {"elman": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[cfg.cell]
        extra = {"nonlinearity": "tanh"} if cfg.cell == "elman" else {}
        self.rnn = rnn(cfg.embed_dim, H, num_layers=cfg.layers, batch_first=True,
                       dropout=dropout if cfg.layers > 1 else 0.0, **extra)
        if cfg.attention == "additive":
            self.attn = Additive(H, cfg.attn_dim)
        elif cfg.attention == "dot":
            self.attn = Dot()
        elif cfg.attention == "cosine":
            self.attn = Cosine()
        elif cfg.attn_kv == "continuation":
            self.attn = MultiheadKV(H, cfg.heads, cfg.embed_dim)
        else:
            self.attn = nn.MultiheadAttention(H, cfg.heads, batch_first=True)
        self.combine = nn.Linear(H + cfg.context_dim, H)
        self.out = nn.Linear(H, cfg.vocab_size)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, need_weights=False, window=None):
        """x: [B, T] token ids -> logits [B, T, V] and, if asked, band maps [B, heads, T, W].

        window: attend over this many positions instead of the model's (window=1 is
        the attention's contribution removed: each position sees only itself)."""
        cfg = self.cfg
        W = cfg.window if window is None else window
        e = self.embed(x)
        h, _ = self.rnn(e)
        h = self.drop(h)
        if cfg.attn_kv == "continuation":
            keys = F.pad(h, (0, 0, 1, 0))[:, :-1]  # h_{i-1}, zeros before position 0
            ctx, band = self.attn(h, W, keys, e)
        elif cfg.attention == "multihead":
            mask = band_mask(x.shape[1], W, x.device)
            ctx, w = self.attn(h, h, h, attn_mask=mask, need_weights=need_weights,
                               average_attn_weights=False)
            band = dense_to_band(w, W) if need_weights else None
        else:
            ctx, band = self.attn(h, W)
        o = self.drop(torch.tanh(self.combine(torch.cat([h, ctx], -1))))
        return self.out(o), band


def encode(text):
    """Byte tokenizer: [BOS] + UTF-8 bytes."""
    return [BOS_ID] + list(text.encode("utf-8"))


# ---- safetensors -------------------------------------------------------------

EXPORT_DTYPES = ("f32", "bf16")


def save_safetensors(path, tensors, metadata, dtype="f32"):
    """Writes tensors (name -> tensor) as F32, or as BF16 rounded to nearest even with
    dtype="bf16" (half the size), and string metadata; header padded to 8."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}")
    header = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous().cpu()
        if dtype == "bf16":
            data = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes()
        else:
            data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": dtype.upper(), "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - (8 + len(hjson)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """Returns (tensors, metadata), F32 (BF16 widened exactly).  Trusting reader for
    files this project wrote."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        if e["dtype"] == "BF16":
            bits = np.frombuffer(raw[base + b: base + end], dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            arr = np.frombuffer(raw[base + b: base + end], dtype="<f4").copy()
        tensors[name] = torch.from_numpy(arr).reshape(e["shape"])
    return tensors, meta


def export_model(model, path, provenance=None, dtype="f32"):
    """Writes the model's weights (F32, or BF16 with dtype="bf16") and metadata."""
    md = model.cfg.metadata()
    md.update({k: str(v) for k, v in (provenance or {}).items()})
    save_safetensors(path, model.state_dict(), md, dtype)


def load_model(path):
    tensors, md = load_safetensors(path)
    model = AttnLM(Config.from_metadata(md))
    model.load_state_dict(tensors)
    model.eval()
    return model, md
