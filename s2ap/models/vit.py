"""Vision Transformer for small images, as in the S2AP paper (Sect. 4.1).

4x4 patches, 8 pre-norm encoder layers, 6 heads, width 384, MLP width 1536, a class token
and learned positional embeddings. Attention is written out here instead of using
``nn.MultiheadAttention`` because that module keeps its input projection as a bare
parameter: building qkv, the output projection and the MLP from the factory's linear
layers makes every one of them prunable. The head is built with ``head=True`` and is left
dense by default (``prune_head=False``), following the paper.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from s2ap.layers import LayerFactory
from s2ap.models import register

logger = logging.getLogger(__name__)

PATCH_SIZE = 4


class Attention(nn.Module):
    """Multi-head self-attention with prunable qkv and output projections."""

    def __init__(self, layers: LayerFactory, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = layers.linear(dim, 3 * dim, bias=True)
        self.proj = layers.linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (batch, heads, tokens, head_dim)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    """Two prunable linear layers with a GELU in between."""

    def __init__(self, layers: LayerFactory, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = layers.linear(dim, hidden, bias=True)
        self.act = nn.GELU()
        self.fc2 = layers.linear(hidden, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder layer: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, layers: LayerFactory, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(layers, dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(layers, dim, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding (a stride-``patch`` convolution), class token, encoder, LN, head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        layers: LayerFactory,
        patch: int = PATCH_SIZE,
        depth: int = 8,
        heads: int = 6,
        dim: int = 384,
        mlp_dim: int = 1536,
    ) -> None:
        super().__init__()
        if image_size % patch != 0:
            raise ValueError(f"vit needs an image size divisible by {patch}, got {image_size}")
        num_patches = (image_size // patch) ** 2
        self.patch_embed = layers.conv(in_channels, dim, patch, stride=patch, padding=0, bias=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(layers, dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = layers.linear(dim, num_classes, bias=True, head=True)
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated-normal (std 0.02) weights and zero biases, the usual ViT recipe.

        The small scale keeps the residual stream from growing with depth at initialisation.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@register("vit", prune_head=False, min_image_size=8)
def build_vit(num_classes: int, in_channels: int, image_size: int, layers: LayerFactory) -> nn.Module:
    """The paper's ViT; the image size fixes the number of tokens (and positional embeddings)."""
    logger.debug(
        "building vit for %dx%d inputs (%d patches)", image_size, image_size, (image_size // PATCH_SIZE) ** 2
    )
    return VisionTransformer(num_classes, in_channels, image_size, layers)
