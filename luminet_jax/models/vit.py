"""Vision transformers in the timm/DeiT layout, in Flax: DeiT-tiny, DeiT-small, compact ViT.

Layout (timm `VisionTransformer`, class token, no distillation token): a strided conv patch
embedding, a learned class token and position embedding, `depth` pre-norm blocks
(LayerNorm eps 1e-6, multi-head self-attention with a biased qkv projection, LayerNorm,
GELU MLP), a final LayerNorm and a linear head on the class token. Submodule names follow
timm (`patch_embed/proj`, `cls_token`, `pos_embed`, `blocks_0/norm1`, `attn/qkv`,
`attn/proj`, `norm2`, `mlp/fc1`, `mlp/fc2`, `norm`, `head`), so the generic key rule of
`torch_convert` maps every leaf to timm's state_dict.

Variants:
- `DeiTTiny`: patch 16, width 192, depth 12, 3 heads; 5,717,416 parameters at 1000 classes
  and 224x224 inputs.
- `DeiTSmall`: patch 16, width 384, depth 12, 6 heads; 22,050,664 parameters.
- `ViTCompact`: the compact CIFAR student of the paper's Table 6 (about 2.38M parameters).
  The paper gives only the size, so we chose patch 4 (an 8x8 grid plus the class token at
  32x32), width 128, depth 12, 4 heads of 32, MLP ratio 4: 2,407,140 parameters at 100
  classes (1% above 2.38M; no regular DeiT-style configuration lands closer).

The position embedding's length is fixed at init from the input size (224 for DeiT, 32 for
the compact model); there is no interpolation to other sizes.

Dropout, attention dropout and drop-path (stochastic depth, linearly increasing over the
blocks as in timm) default to 0; when non-zero they need a "dropout" rng in training.

feats: "stem" = the patch embeddings (B, N, D) before the class token and position
embedding; "stage1".."stage4" = the tokens (B, N + 1, D) after blocks depth/4, depth/2,
3*depth/4 and depth (rounded up); "pooled" = the final-normed class token (B, D).
ViTs have no BatchNorm, so their variables have no "batch_stats" collection; `axis_name` is
accepted for a uniform interface and unused.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from luminet_jax.models import layers

LAYER_NORM_EPS = 1e-6
# timm's init: trunc_normal(std=0.02) for linear weights and the position embedding.
TRUNC_NORMAL_INIT = nn.initializers.truncated_normal(0.02)
NUM_STAGES = 4


class Attention(nn.Module):
    """Multi-head self-attention with timm's fused qkv projection.

    Attributes:
      num_heads: number of heads (the width must divide evenly).
      attn_drop_rate: dropout on the attention weights.
      proj_drop_rate: dropout after the output projection.
      dense: a partial of `nn.Dense`.
    """

    num_heads: int
    dense: Any
    attn_drop_rate: float = 0.0
    proj_drop_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads
        qkv = self.dense(3 * width, name="qkv")(x)
        # timm: reshape(B, N, 3, heads, head_dim); q, k, v are (B, N, heads, head_dim).
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim**-0.5, k)
        weights = nn.softmax(scores, axis=-1)
        weights = nn.Dropout(self.attn_drop_rate, deterministic=not train)(weights)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, tokens, width)
        out = self.dense(width, name="proj")(out)
        return nn.Dropout(self.proj_drop_rate, deterministic=not train)(out)


class Mlp(nn.Module):
    """timm's transformer MLP: fc1, exact GELU, fc2.

    Attributes:
      hidden: hidden width.
      drop_rate: dropout after each linear layer.
      dense: a partial of `nn.Dense`.
    """

    hidden: int
    dense: Any
    drop_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        width = x.shape[-1]
        x = nn.gelu(self.dense(self.hidden, name="fc1")(x), approximate=False)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        x = self.dense(width, name="fc2")(x)
        return nn.Dropout(self.drop_rate, deterministic=not train)(x)


class Block(nn.Module):
    """Pre-norm transformer block with optional drop-path on both residual branches.

    Attributes:
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / model width.
      dense: a partial of `nn.Dense`.
      layer_norm: a partial of `nn.LayerNorm`.
      drop_rate: dropout after projections.
      attn_drop_rate: dropout on attention weights.
      drop_path_rate: probability of dropping a residual branch per sample.
    """

    num_heads: int
    mlp_ratio: float
    dense: Any
    layer_norm: Any
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        # Drop-path: one Bernoulli draw per sample, broadcast over tokens and channels.
        drop_path = functools.partial(
            nn.Dropout, self.drop_path_rate, broadcast_dims=(1, 2), deterministic=not train
        )
        y = self.layer_norm(name="norm1")(x)
        y = Attention(
            self.num_heads,
            dense=self.dense,
            attn_drop_rate=self.attn_drop_rate,
            proj_drop_rate=self.drop_rate,
            name="attn",
        )(y, train=train)
        x = x + drop_path()(y)
        y = self.layer_norm(name="norm2")(x)
        y = Mlp(
            int(x.shape[-1] * self.mlp_ratio),
            dense=self.dense,
            drop_rate=self.drop_rate,
            name="mlp",
        )(y, train=train)
        return x + drop_path()(y)


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected by a strided conv, flattened row-major to tokens.

    Attributes:
      patch_size: patch side.
      embed_dim: token width.
      dtype: compute dtype.
      param_dtype: parameter dtype.
    """

    patch_size: int
    embed_dim: int
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = nn.Conv(
            self.embed_dim,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            # Reference: timm keeps PyTorch's default conv init here (similar fan-in scale).
            kernel_init=nn.initializers.lecun_normal(),
            name="proj",
        )(x)
        batch, height, width, channels = x.shape
        return x.reshape(batch, height * width, channels)  # (B, N, D), as torch flatten(2).T


class ViT(nn.Module):
    """timm-style VisionTransformer with a class token.

    Attributes:
      num_classes: classifier size.
      patch_size: patch side in pixels.
      embed_dim: token width.
      depth: number of blocks.
      num_heads: attention heads per block.
      mlp_ratio: MLP hidden width / token width.
      drop_rate: dropout after the position embedding and projections (default 0).
      attn_drop_rate: dropout on attention weights (default 0).
      drop_path_rate: stochastic-depth rate of the last block, linear from 0 (default 0).
      dtype: compute dtype; None uses the inputs' dtype.
      param_dtype: parameter dtype.
      axis_name: accepted for a uniform model interface; unused (no BatchNorm).
    """

    num_classes: int
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> tuple[jnp.ndarray, dict]:
        """Returns (logits, feats) for NHWC images."""
        dtype = layers.compute_dtype(self.dtype, x)
        x = x.astype(dtype)
        dense = functools.partial(
            nn.Dense, dtype=dtype, param_dtype=self.param_dtype, kernel_init=TRUNC_NORMAL_INIT
        )
        layer_norm = functools.partial(
            nn.LayerNorm, epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=self.param_dtype
        )
        feats = {}
        x = PatchEmbed(
            self.patch_size,
            self.embed_dim,
            dtype=dtype,
            param_dtype=self.param_dtype,
            name="patch_embed",
        )(x)
        feats["stem"] = x
        batch, num_patches, width = x.shape
        # Reference: timm (recent) draws cls_token from N(0, 1e-6); DeiT used trunc_normal(0.02).
        cls_token = self.param(
            "cls_token", TRUNC_NORMAL_INIT, (1, 1, width), self.param_dtype
        ).astype(dtype)
        pos_embed = self.param(
            "pos_embed", TRUNC_NORMAL_INIT, (1, num_patches + 1, width), self.param_dtype
        ).astype(dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (batch, 1, width)), x], axis=1)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x + pos_embed)
        stage_ends = [math.ceil(self.depth * (k + 1) / NUM_STAGES) for k in range(NUM_STAGES)]
        for index in range(self.depth):
            rate = self.drop_path_rate * index / max(self.depth - 1, 1)
            x = Block(
                self.num_heads,
                self.mlp_ratio,
                dense=dense,
                layer_norm=layer_norm,
                drop_rate=self.drop_rate,
                attn_drop_rate=self.attn_drop_rate,
                drop_path_rate=rate,
                name=f"blocks_{index}",
            )(x, train=train)
            for stage, end in enumerate(stage_ends, start=1):
                if end == index + 1:
                    feats[f"stage{stage}"] = x
        pooled = layer_norm(name="norm")(x)[:, 0]
        feats["pooled"] = pooled
        logits = dense(self.num_classes, name="head")(pooled)
        return logits, feats


DeiTTiny = functools.partial(ViT, patch_size=16, embed_dim=192, depth=12, num_heads=3)
DeiTSmall = functools.partial(ViT, patch_size=16, embed_dim=384, depth=12, num_heads=6)
ViTCompact = functools.partial(ViT, patch_size=4, embed_dim=128, depth=12, num_heads=4)
