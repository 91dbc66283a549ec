"""FoveatedVLM: each frame becomes one token chosen by a query; the LLM reading the tokens emits the next query.

Training runs two passes over a clip (B clips, T frames, LLM width H):
  coarse: every frame read with the learned static query   -> LLM over [coarse_token, zc_0 .. zc_{T-1}, (text)]
  fine:   frame 0 read with q_init, frame t with the query the LLM emitted at zc_{t-1} -> LLM over [fine_token, zf..]
Recon: the state at the mode token predicts frame 0 from the learned blank latent; the state at z_{t-1} predicts
frame t from the true latent of frame t-1 (teacher forcing). The target is the VAE latent given with the batch or,
with a target module (model.target: dino), each frame's own encoder features from the cache the queries read.
Caption: [mode, z_0..z_{T-1}, video_end, caption, eos]; video_end's state predicts the first caption token.
ratio = loss_coarse / loss_fine (> 1: looking where the model chose helped). Inference: coarse, fine (coarse->fine)
and autoregressive (one frame at a time, LLM KV cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Attention, FoveatedEncoder, PatchCache
from .heads import Head

IGNORE = -100  # label of padding; eos is always a target so the model learns to stop


@dataclass
class PassOutput:
    """One pass (coarse, a fine iteration, or autoregressive) over a batch of clips."""

    hidden: torch.Tensor  # [B, 1+T(+1+L), H] last hidden states: mode token, frame tokens, (video_end, caption)
    queries: torch.Tensor  # [B, T, Q] the queries that read the frames in this pass
    recon: torch.Tensor | None = None  # [B, T] per-frame loss of the next-frame prediction (model.target_loss)
    mse: torch.Tensor | None = None  # [B, T] per-frame MSE of the prediction, whatever the loss
    cosine: torch.Tensor | None = None  # [B, T] per-frame cosine similarity over channels, mean over positions
    pred: torch.Tensor | None = None  # [B, T, C, S, S]
    caption_sum: torch.Tensor | None = None  # [B] summed token CE of each clip's caption (+eos)
    caption_count: torch.Tensor | None = None  # [B] caption targets per clip
    attention: Attention | None = None

    @property
    def recon_loss(self) -> torch.Tensor:
        return self.recon.mean()

    @property
    def caption_loss(self) -> torch.Tensor:  # mean over all caption tokens of the batch
        return self.caption_sum.sum() / self.caption_count.sum().clamp(min=1)


@dataclass
class Output:
    coarse: PassOutput
    fine: list[PassOutput] = field(default_factory=list)  # one per fine iteration; fine[-1] is the final one


@dataclass
class Batch:
    frames: torch.Tensor  # [B, T, 3, H, W] ImageNet-normalised
    targets: torch.Tensor | None = None  # [B, T, C, S, S] what each frame's prediction is scored against
    caption_ids: torch.Tensor | None = None  # [B, L+1] caption tokens + eos, right-padded with pad_id
    caption_mask: torch.Tensor | None = None  # [B, L+1] True on real tokens (eos included)
    index: torch.Tensor | None = None  # [B] dataset index of each clip


class FoveatedVLM(nn.Module):
    def __init__(
        self,
        encoder: FoveatedEncoder,
        llm: nn.Module,
        head: Head,
        query_dim: int,
        target_shape: tuple[int, int, int],
        visual_scale: float | None = None,
        target: nn.Module | None = None,
        target_loss: str = "mse",
    ):
        super().__init__()
        self.encoder, self.llm, self.head = encoder, llm, head
        self.target = target  # None: targets come with the batch (VAE latents); else encoder features -> targets
        self.target_loss = target_loss
        hidden = llm.config.hidden_size
        self.target_shape = tuple(target_shape)  # (C, S, S)
        if visual_scale is None:  # match the LLM's own token scale (SmolLM2: ~0.14)
            visual_scale = llm.get_input_embeddings().weight.detach().float().std().item()
        self.register_buffer("visual_scale", torch.tensor(float(visual_scale)))
        self.dino_to_llm = nn.Linear(encoder.width, hidden)
        self.llm_to_query = nn.Linear(hidden, query_dim)
        self.q_static = nn.Parameter(torch.randn(1, query_dim))  # std 1.0: at 0.02 fine == coarse (BUG-001)
        self.q_init = nn.Parameter(torch.randn(1, query_dim))
        self.coarse_token = nn.Parameter(torch.randn(1, 1, hidden) * visual_scale)
        self.fine_token = nn.Parameter(torch.randn(1, 1, hidden) * visual_scale)
        self.video_end = nn.Parameter(torch.randn(1, 1, hidden) * visual_scale)
        self.z_init = nn.Parameter(torch.zeros(1, *self.target_shape))  # learned blank "previous frame" for frame 0

    # -----------------------------------------------------------------------------------------------------------------
    # building blocks

    def backbone_modules(self) -> list[nn.Module]:
        """Pretrained-architecture parts; everything else is newly initialised (the connector)."""
        return [self.encoder.dino, self.llm]

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder token -> LLM token at the LLM's embedding scale. RMS-normalised per token: the reference divided
        by the std of the whole batch, which couples clips and breaks the train/autoregressive equivalence."""
        x = self.dino_to_llm(z)
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * self.visual_scale

    def read(self, queries: torch.Tensor, cache: PatchCache, return_attention: bool = False):
        """queries [B, T, Q], cache of B*T frames -> LLM tokens [B, T, H]; one batched attend, no loop over frames."""
        b, t, _ = queries.shape
        z, attention = self.encoder.attend(queries.reshape(b * t, -1), cache, return_attention)
        return self.project(z).view(b, t, -1), attention

    def shift(self, queries: torch.Tensor) -> torch.Tensor:
        """Queries emitted at frames 0..T-1 -> queries for frames 0..T-1: q_init, then the one from frame t-1."""
        q0 = self.q_init.expand(queries.shape[0], 1, -1)
        return torch.cat([q0, queries[:, :-1]], dim=1)

    def run_llm(self, mode: torch.Tensor, tokens: torch.Tensor, batch: Batch | None = None) -> torch.Tensor:
        """[mode, frame tokens, (video_end, caption)] -> last hidden states [B, 1+T(+1+L), H]."""
        b = tokens.shape[0]
        parts = [mode.expand(b, -1, -1), tokens]
        if batch is not None and batch.caption_ids is not None:
            parts += [self.video_end.expand(b, -1, -1), self.embed(batch.caption_ids[:, :-1])]
        return self.llm.model(inputs_embeds=torch.cat(parts, dim=1)).last_hidden_state

    def previous(self, targets: torch.Tensor) -> torch.Tensor:
        """[B, T, C, S, S] -> what each frame is predicted from: the learned blank, then the true frame t-1."""
        return torch.cat([self.z_init.expand(targets.shape[0], 1, *self.target_shape), targets[:, :-1]], dim=1)

    def with_targets(self, batch: Batch, cache: PatchCache) -> Batch:
        """The batch with its targets: as given (VAE latents), or each frame's own encoder features (dino target),
        taken from the cache the queries read, detached."""
        if batch.targets is not None or self.target is None:
            return batch
        b, t = batch.frames.shape[:2]
        return replace(batch, targets=self.target(cache.features, b, t))  # [B, T, C, S, S]

    def predict_next(self, h: torch.Tensor, targets: torch.Tensor):
        """h [B, T, H] (states at mode, z_0..z_{T-2}), targets [B, T, C, S, S] -> each frame's prediction and its
        (loss, MSE, cosine) [B, T] each. The held-out h-ablation calls it with h replaced and nothing else changed."""
        pred = self.head(h, self.previous(targets))  # [B, T, C, S, S]
        return pred, frame_losses(pred, targets, self.target_loss)

    def score(self, passes: list[PassOutput], batch: Batch, num_frames: int, recon: bool, caption: bool) -> None:
        """Fill in each pass's losses from its hidden states; all passes go through the head in one call."""
        t, n = num_frames, len(passes)
        if recon and batch.targets is not None:
            h = torch.cat([p.hidden[:, :t] for p in passes])  # states at mode, z_0..z_{T-2}: [n*B, T, H]
            pred, losses = self.predict_next(h, batch.targets.repeat(n, 1, 1, 1, 1))  # (loss, mse, cosine) [n*B, T]
            for p, p_pred, loss, mse, cos in zip(passes, pred.chunk(n), *(x.chunk(n) for x in losses)):
                p.pred, p.recon, p.mse, p.cosine = p_pred, loss, mse, cos
        if caption and batch.caption_ids is not None:
            labels = batch.caption_ids.masked_fill(~batch.caption_mask, IGNORE)
            for p in passes:
                logits = self.llm.lm_head(p.hidden[:, t + 1 :])  # only where a caption token is the target
                ce = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
                p.caption_sum, p.caption_count = ce.sum(1), batch.caption_mask.sum(1)

    # -----------------------------------------------------------------------------------------------------------------
    # training forward: coarse pass, then fine iterations

    def forward(
        self,
        batch: Batch,
        recon: bool = True,
        caption: bool = False,
        fine_iterations: int = 1,
        cache: PatchCache | None = None,
        return_attention: bool = False,
    ) -> Output:
        b, t = batch.frames.shape[:2]
        if cache is None:
            cache = self.encode(batch.frames)
        batch = self.with_targets(batch, cache)
        text = batch if caption else None

        q_coarse = self.q_static.expand(b, t, -1)  # [B, T, Q]
        tokens, attention = self.read(q_coarse, cache, return_attention)
        coarse = PassOutput(self.run_llm(self.coarse_token, tokens, text), q_coarse, attention=attention)
        fine, hidden = [], coarse.hidden
        for _ in range(fine_iterations):  # each iteration reads with the queries the previous pass emitted
            queries = self.shift(self.llm_to_query(hidden[:, 1 : 1 + t]))  # [B, T, Q]; frame t's from frames < t
            tokens, attention = self.read(queries, cache, return_attention)
            fine.append(PassOutput(self.run_llm(self.fine_token, tokens, text), queries, attention=attention))
            hidden = fine[-1].hidden
        self.score([coarse, *fine], batch, t, recon=recon, caption=caption)
        return Output(coarse, fine)

    def encode(self, frames: torch.Tensor) -> PatchCache:
        """frames [B, T, 3, H, W] -> cache of the B*T frames (no gradient into a frozen encoder)."""
        flat = frames.flatten(0, 1)
        if any(p.requires_grad for p in self.encoder.dino.parameters()):
            return self.encoder.encode(flat)
        with torch.no_grad():
            return self.encoder.encode(flat)

    # -----------------------------------------------------------------------------------------------------------------
    # inference

    @torch.no_grad()
    def forward_autoregressive(
        self,
        batch: Batch,
        queries: torch.Tensor | None = None,
        recon: bool = True,
        caption: bool = False,
        use_cache: bool = True,
        return_attention: bool = False,
    ) -> PassOutput:
        """q_init reads frame 0; then one frame at a time: the LLM (with its KV cache) reads the new token and its
        state gives the query for the next frame; the caption continues from the same cache. `queries` [B, T, Q]
        replaces the LLM's queries (fed the coarse pass's shifted queries, this equals the fine pass).
        use_cache=False recomputes the whole prefix at every step (the reference for the cached path)."""
        cache = self.encode(batch.frames)
        batch = self.with_targets(batch, cache)
        out, kv, fed = self._autoregressive_frames(batch, queries, use_cache, return_attention, cache)
        if caption and batch.caption_ids is not None:
            tail = torch.cat([self.video_end.expand(len(fed[0]), -1, -1), self.embed(batch.caption_ids[:, :-1])], 1)
            out.hidden = torch.cat([out.hidden, self._step(fed, tail, kv)], dim=1)
        self.score([out], batch, batch.frames.shape[1], recon=recon, caption=caption)
        return out

    def _autoregressive_frames(self, batch: Batch, queries, use_cache: bool, return_attention=False, cache=None):
        from transformers import DynamicCache

        b, t = batch.frames.shape[:2]
        frames = self.encode(batch.frames) if cache is None else cache
        frame_index = torch.arange(b * t, device=batch.frames.device).view(b, t)
        kv = DynamicCache(config=self.llm.config) if use_cache else None
        fed: list[torch.Tensor] = []  # every input fed so far (the no-cache path re-reads them)
        q = self.q_init.expand(b, -1) if queries is None else queries[:, 0]
        used, hidden, maps = [], [], []
        for i in range(t):  # inherently sequential: frame i's query comes from the state after frame i-1
            z, attention = self.encoder.attend(q, frames.index(frame_index[:, i]), return_attention)
            new = self.project(z)[:, None]  # [B, 1, H]
            if i == 0:
                new = torch.cat([self.fine_token.expand(b, -1, -1), new], dim=1)
            hidden.append(self._step(fed, new, kv))
            used.append(q)
            maps.append(attention)
            if i + 1 < t:
                q = self.llm_to_query(hidden[-1][:, -1]) if queries is None else queries[:, i + 1]
        out = PassOutput(torch.cat(hidden, dim=1), torch.stack(used, dim=1))  # hidden [B, 1+T, H]
        if return_attention:  # [B*T, 1, L, heads, P] in frame order, as in the parallel passes
            out.attention = Attention(torch.stack([m.weights for m in maps], dim=1).flatten(0, 1))
        return out, kv, fed

    def _step(self, fed: list[torch.Tensor], new: torch.Tensor, kv) -> torch.Tensor:
        """Feed `new` [B, n, H] after everything in `fed`; returns the n new hidden states."""
        fed.append(new)
        if kv is not None:
            return self.llm.model(inputs_embeds=new, cache=kv, use_cache=True).last_hidden_state
        return self.llm.model(inputs_embeds=torch.cat(fed, dim=1)).last_hidden_state[:, -new.shape[1] :]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

    @torch.no_grad()
    def generate(
        self,
        frames: torch.Tensor,
        mode: str = "fine",
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """Caption a batch of clips. mode: coarse | fine | autoregressive. temperature 0 = greedy.
        Returns token ids [B, <=max_new_tokens], eos included where it was emitted, pad_id after it."""
        from transformers import DynamicCache

        b = frames.shape[0]
        batch = Batch(frames)
        end = self.video_end.expand(b, -1, -1)
        if mode == "autoregressive":
            _, kv, fed = self._autoregressive_frames(batch, None, use_cache=True)
            last = self._step(fed, end, kv)[:, -1]
        elif mode in ("coarse", "fine"):
            cache = self.encode(frames)
            t = frames.shape[1]
            tokens, _ = self.read(self.q_static.expand(b, t, -1), cache)
            mode_token = self.coarse_token
            if mode == "fine":
                hidden = self.run_llm(self.coarse_token, tokens)
                tokens, _ = self.read(self.shift(self.llm_to_query(hidden[:, 1 : 1 + t])), cache)
                mode_token = self.fine_token
            kv = DynamicCache(config=self.llm.config)
            prefix = torch.cat([mode_token.expand(b, -1, -1), tokens, end], dim=1)
            last = self.llm.model(inputs_embeds=prefix, cache=kv, use_cache=True).last_hidden_state[:, -1]
        else:
            raise ValueError(f"mode must be coarse, fine or autoregressive, got {mode!r}")

        eos_id = self.llm.config.eos_token_id if eos_id is None else eos_id
        pad_id = self.llm.config.pad_token_id if self.llm.config.pad_token_id is not None else eos_id
        generator = torch.Generator(device=frames.device).manual_seed(seed)
        done = torch.zeros(b, dtype=torch.bool, device=frames.device)
        out = []
        for _ in range(max_new_tokens):
            token = sample(self.llm.lm_head(last).float(), temperature, top_p, generator)  # [B]
            token = token.masked_fill(done, pad_id)
            out.append(token)
            done |= token == eos_id
            if done.all():
                break
            last = self.llm.model(inputs_embeds=self.embed(token[:, None]), cache=kv, use_cache=True).last_hidden_state[
                :, -1
            ]
        return torch.stack(out, dim=1)


def frame_losses(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse"):
    """[..., C, S, S] pairs -> (loss, mse, cosine), each [...] (one value per frame). cosine: similarity of the
    C-channel vectors at each position, averaged over positions; the loss is MSE, smooth-L1 or 1 - cosine."""
    pred, target = pred.float(), target.float()
    mse = (pred - target).pow(2).flatten(-3).mean(-1)
    cos = F.cosine_similarity(pred, target, dim=-3).flatten(-2).mean(-1)
    if kind == "mse":
        return mse, mse, cos
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none").flatten(-3).mean(-1), mse, cos
    if kind == "cosine":
        return 1 - cos, mse, cos
    raise ValueError(f"model.target_loss: {kind!r}; choose mse, smooth_l1 or cosine")


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """logits [B, V] -> token [B]: greedy at temperature 0, else nucleus sampling (the smallest set of tokens whose
    probability reaches top_p, the token that crosses it included)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reached top_p
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
