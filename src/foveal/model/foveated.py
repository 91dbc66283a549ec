"""FoveatedVLM: each frame becomes one token chosen by a query; the LLM reading the tokens emits the next query.

Training runs two passes over a clip (B clips, T frames, LLM width H):
  coarse: every frame read with the learned static query   -> LLM over [coarse_token, zc_0 .. zc_{T-1}, (text)]
  fine:   frame 0 read with q_init, frame t with the query the LLM emitted at zc_{t-1} -> LLM over [fine_token, zf..]
Prediction: the state at the mode token predicts frame 0 from the learned blank target; the state at z_{t-1}
predicts frame t from the true target of frame t-1 (teacher forcing). The target (VAE latent, encoder features, ...)
is a registered component (model/targets/). Caption: [mode, z_0..z_{T-1}, video_end, caption, eos]; video_end's
state predicts the first caption token. The model returns predictions and logits; objectives turn them into losses.
Inference: coarse, fine (coarse->fine) and autoregressive (one frame at a time, LLM KV cache).
The dense reader control (dense_tokens = k > 0) has no query: its one pass reads each frame as k average-pooled
patch tokens, [mode, k tokens of frame 0, .., k of frame T-1, (text)], and keeps the states the one-token reader has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from foveal.model.encoder import Attention, FoveatedEncoder, PatchCache
from foveal.model.glimpse import GlimpseLocation
from foveal.model.heads import Head
from foveal.model.targets import Target

# With one or more fine iterations, frame 0's prediction comes from the mode token's state and frame 1's from the
# state after z_0, which every pass reads with a learned static query (q_static / q_init): only frames t >= 2 are
# predicted from states that saw an LLM-chosen look (frame 1 is the first one read with an LLM query). Held-out
# recon numbers are over these steered frames (tests/test_steered.py checks the claim).
FIRST_STEERED = 2


@dataclass
class Pass:
    """One reading of a batch of clips: the coarse pass, a fine iteration, or the autoregressive path."""

    queries: torch.Tensor | None  # [B, T, Q] the queries that read the frames (None: the dense reader)
    tokens: torch.Tensor  # [B, T, H] the frame tokens they read ([B, T*k, H] the dense reader's pooled tokens)
    hidden: torch.Tensor | None = None  # [B, 1+T(+1+L), H] LLM states: mode token, frames, (video_end, caption)
    attention: Attention | None = None
    pred: torch.Tensor | None = None  # [B, T, C, S, S] each frame's predicted target
    logits: torch.Tensor | None = None  # [B, L+1, V] where a caption token (or eos) is the target


@dataclass
class Output:
    coarse: Pass
    fine: list[Pass] = field(default_factory=list)  # one per fine iteration; fine[-1] is the final one
    targets: torch.Tensor | None = None  # [B, T, C, S, S] what the predictions are scored against

    @property
    def passes(self) -> list[Pass]:
        return [self.coarse, *self.fine]


@dataclass
class HeadOptions:
    """How the head is fed and what it outputs (model.look, prev_only, predict, prev_noise, prev_drop)."""

    look: str = "learned"  # oracle: the fine pass reads at the ground-truth target (the caller passes fine_bias)
    prev_only: bool = False  # h replaced by a learned constant: the loss from the previous frame alone
    predict: str = "frame"  # delta: the head's output is the change, added to the previous frame
    prev_noise: float = 0.0  # training only: noise std on prev, in units of the batch's target std
    prev_drop: float = 0.0  # training only: share of frames whose prev is the learned blank


@dataclass
class Batch:
    frames: torch.Tensor  # [B, T, 3, H, W] ImageNet-normalised
    targets: torch.Tensor | None = None  # [B, T, C, S, S]; None: the model's target makes them
    caption_ids: torch.Tensor | None = None  # [B, L+1] caption tokens + eos, right-padded with pad_id
    caption_mask: torch.Tensor | None = None  # [B, L+1] True on real tokens (eos included)
    index: torch.Tensor | None = None  # [B] dataset index of each clip
    keys: list[str] | None = None  # [B] clip keys (what cached targets are looked up by)
    pixels: torch.Tensor | None = None  # [B, T, 3, H, W] uint8, the frames as read (a lazily encoded target's input)


class FoveatedVLM(nn.Module):
    def __init__(
        self,
        encoder: FoveatedEncoder,
        llm: nn.Module,
        head: Head,
        target: Target,
        query_dim: int,
        visual_scale: float | None = None,
        options: HeadOptions | None = None,
        glimpse: GlimpseLocation | None = None,
        dense_tokens: int = 0,
    ):
        super().__init__()
        self.encoder, self.llm, self.head, self.target = encoder, llm, head, target
        self.glimpse = glimpse  # None: a frame token is what was read, not where (model.glimpse = none)
        self.options = options or HeadOptions()
        self.dense_tokens = dense_tokens  # k > 0: the dense reader control (k pooled patch tokens per frame)
        hidden = llm.config.hidden_size
        self.target_shape = tuple(target.shape)  # (C, S, S)
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
        if self.options.prev_only:  # the floor control: one learned state for every clip and frame
            self.h_constant = nn.Parameter(torch.zeros(1, 1, hidden))

    # -----------------------------------------------------------------------------------------------------------------
    # building blocks

    def backbone_modules(self) -> list[nn.Module]:
        """Pretrained-architecture parts; everything else is newly initialised (the connector)."""
        return [self.encoder.dino, self.llm]

    def compile_parts(self, backend: str = "inductor") -> None:
        """torch.compile each part on its own (train.compile): the encoder's two readings, the LLM body and the
        head. The whole forward would break its graph at the passes' Python control flow; compiled in place, the
        parameters keep their names, so checkpoints are the same as without."""
        self.encoder.encode = torch.compile(self.encoder.encode, backend=backend)
        self.encoder.attend = torch.compile(self.encoder.attend, backend=backend)
        self.llm.model.compile(backend=backend)
        self.head.compile(backend=backend)

    def encode(self, frames: torch.Tensor) -> PatchCache:
        """frames [B, T, 3, H, W] -> cache of the B*T frames (no gradient into a frozen encoder)."""
        flat = frames.flatten(0, 1)
        if any(p.requires_grad for p in self.encoder.dino.parameters()):
            return self.encoder.encode(flat)
        with torch.no_grad():
            return self.encoder.encode(flat)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder token -> LLM token at the LLM's embedding scale. RMS-normalised per token: the reference divided
        by the std of the whole batch, which couples clips and breaks the train/autoregressive equivalence."""
        x = self.dino_to_llm(z)
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * self.visual_scale

    def read(self, queries: torch.Tensor, cache: PatchCache, return_attention: bool = False, bias=None):
        """queries [B, T, Q], cache of B*T frames -> LLM tokens [B, T, H]; one batched attend, no loop over frames.
        bias [B, T, P]: added to the attention logits in every encoder layer (the oracle look: `look_mask`)."""
        b, t, _ = queries.shape
        bias = None if bias is None else bias.reshape(b * t, -1)
        z, attention = self.encoder.attend(
            queries.reshape(b * t, -1), cache, self.wants_attention(return_attention), bias
        )
        return self.frame_token(z, attention).view(b, t, -1), attention if return_attention else None

    def wants_attention(self, return_attention: bool) -> bool:
        return return_attention or self.glimpse is not None

    def frame_token(self, z: torch.Tensor, attention: Attention | None) -> torch.Tensor:
        """Encoder tokens [N, D] -> LLM tokens [N, H]; with a glimpse location, plus where the query looked (the last
        layer's head-averaged attention), at the same RMS as the content."""
        x = self.project(z)
        if self.glimpse is None:
            return x
        g = self.glimpse(attention.weights[:, 0, -1].mean(-2))  # [N, P] -> [N, H]
        return x + g * torch.rsqrt(g.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(g.dtype) * self.visual_scale

    def dense_read(self, cache: PatchCache, b: int, t: int) -> torch.Tensor:
        """The dense reader's tokens: each frame's final patch features (CLS excluded) average-pooled to a
        sqrt(k) x sqrt(k) grid and projected like a query's token -> [B, T*k, H], frame by frame, row-major."""
        f = cache.features[:, 1:]  # [B*T, G*G, D]
        g, side = math.isqrt(f.shape[1]), math.isqrt(self.dense_tokens)
        pooled = F.adaptive_avg_pool2d(f.transpose(1, 2).unflatten(-1, (g, g)), side)  # [B*T, D, side, side]
        return self.project(pooled.flatten(2).transpose(1, 2)).reshape(b, t * self.dense_tokens, -1)

    def dense_pass(self, cache: PatchCache, b: int, t: int, text: Batch | None = None, llm: bool = True) -> Pass:
        """The dense reader's one pass: the LLM over [coarse_token, T*k tokens, (video_end, caption)]. It keeps the
        states a one-token reader has, hidden [B, 1+T(+1+L), H]: the mode token's, each frame's last token's (at
        k, 2k, .., T*k: the first state that saw the whole frame) and the caption's, so the head reads it unchanged."""
        tokens = self.dense_read(cache, b, t)  # [B, T*k, H]
        p = Pass(None, tokens)
        if llm:
            h = self.run_llm(self.coarse_token, tokens, text)  # [B, 1+T*k(+1+L), H]
            k, device = self.dense_tokens, h.device
            frame_last = torch.arange(1, t + 1, device=device) * k
            keep = torch.cat([frame_last.new_zeros(1), frame_last, torch.arange(1 + t * k, h.shape[1], device=device)])
            p.hidden = h[:, keep]
        return p

    def shift(self, queries: torch.Tensor) -> torch.Tensor:
        """Queries emitted at frames 0..T-1 -> queries for frames 0..T-1: q_init, then the one from frame t-1."""
        q0 = self.q_init.expand(queries.shape[0], 1, -1)
        return torch.cat([q0, queries[:, :-1]], dim=1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.llm.get_input_embeddings()(ids)

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

    def predict_next(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """h [*P, B, T, H] (states at mode, z_0..z_{T-2}; P passes, or none), targets [B, T, C, S, S] -> predictions
        [*P, B, T, C, S, S]. The passes share the previous frames (noised or dropped alike: a paired comparison).
        The held-out h-ablation calls it with h replaced and nothing else changed."""
        o, prev = self.options, self.previous(targets)  # [B, T, C, S, S]
        if o.prev_only:
            h = self.h_constant.expand_as(h)
        seen = prev
        if self.training and o.prev_noise > 0:  # the reference's untried idea: make the head rely on h
            seen = seen + o.prev_noise * targets.float().std() * torch.randn_like(seen)
        if self.training and o.prev_drop > 0:
            dropped = torch.rand(prev.shape[:2], device=prev.device) < o.prev_drop  # [B, T]
            seen = torch.where(dropped[:, :, None, None, None], self.z_init.expand_as(prev), seen)
        pred = self.head(h, seen)
        return pred + prev if o.predict == "delta" else pred

    def predict(self, passes: list[Pass], targets: torch.Tensor, num_frames: int) -> None:
        """Fill in each pass's predictions; all passes go through the head in one call."""
        h = torch.stack([p.hidden[:, :num_frames] for p in passes])  # states at mode, z_0..z_{T-2}: [n, B, T, H]
        pred = self.predict_next(h, targets)  # [n, B, T, C, S, S]
        for p, p_pred in zip(passes, pred.unbind(0)):
            p.pred = p_pred

    def caption_logits(self, passes: list[Pass], num_frames: int) -> None:
        for p in passes:
            p.logits = self.llm.lm_head(p.hidden[:, num_frames + 1 :])  # only where a caption token is the target

    # -----------------------------------------------------------------------------------------------------------------
    # coarse -> fine: the one implementation that training, evaluation and generation share

    def coarse_to_fine(
        self,
        cache: PatchCache,
        b: int,
        t: int,
        iterations: int,
        text: Batch | None = None,
        return_attention: bool = False,
        final_llm: bool = True,
        fine_bias: torch.Tensor | None = None,
    ) -> list[Pass]:
        """The coarse pass (static query), then `iterations` fine passes, each reading with the queries the pass
        before it emitted, shifted by one frame. final_llm=False stops before the last pass's LLM run (generation
        runs it itself, with a KV cache). fine_bias [B, T, P]: an additive mask on every fine read's attention
        logits (the oracle look); the coarse pass never gets one. The dense reader's one pass is its coarse pass."""
        if self.dense_tokens:
            if iterations:
                raise ValueError("a dense reader (model.dense_tokens > 0) has no query to refine: fine_iterations=0")
            return [self.dense_pass(cache, b, t, text, final_llm)]
        queries = self.q_static.expand(b, t, -1)  # [B, T, Q]
        passes = []
        for i in range(iterations + 1):
            last = i == iterations and not final_llm
            p = self.read_pass(queries, cache, i > 0, text, return_attention, None if i == 0 else fine_bias, not last)
            passes.append(p)
            if last:
                break
            queries = self.shift(self.llm_to_query(p.hidden[:, 1 : 1 + t]))  # frame t's from frames < t
        return passes

    def read_pass(self, queries, cache, fine: bool, text=None, return_attention=False, bias=None, llm=True) -> Pass:
        """One pass with the given queries [B, T, Q]: read the frames, then (llm) run the LLM after the pass's mode
        token. The shuffled-look control calls it with another clip's queries."""
        tokens, attention = self.read(queries, cache, return_attention, bias)
        p = Pass(queries, tokens, attention=attention)
        if llm:
            p.hidden = self.run_llm(self.fine_token if fine else self.coarse_token, tokens, text)
        return p

    def forward(
        self,
        batch: Batch,
        recon: bool = True,
        caption: bool = False,
        fine_iterations: int = 1,
        cache: PatchCache | None = None,
        return_attention: bool = False,
        fine_bias: torch.Tensor | None = None,
    ) -> Output:
        b, t = batch.frames.shape[:2]
        if cache is None:
            cache = self.encode(batch.frames)
        text = batch if caption else None
        passes = self.coarse_to_fine(cache, b, t, fine_iterations, text, return_attention, fine_bias=fine_bias)
        targets = batch.targets
        if recon:
            targets = self.target(batch, cache) if targets is None else targets  # [B, T, C, S, S]
            self.predict(passes, targets, t)
        if caption and batch.caption_ids is not None:
            self.caption_logits(passes, t)
        return Output(passes[0], passes[1:], targets)

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
    ) -> tuple[Pass, torch.Tensor | None]:
        """q_init reads frame 0; then one frame at a time: the LLM (with its KV cache) reads the new token and its
        state gives the query for the next frame; the caption continues from the same cache. `queries` [B, T, Q]
        replaces the LLM's queries (fed the coarse pass's shifted queries, this equals the fine pass).
        use_cache=False recomputes the whole prefix at every step (the reference for the cached path).
        Returns the pass and its targets [B, T, C, S, S] (None without recon)."""
        cache = self.encode(batch.frames)
        out, kv, fed = self._autoregressive_frames(batch, queries, use_cache, return_attention, cache)
        t = batch.frames.shape[1]
        targets = None
        if caption and batch.caption_ids is not None:
            tail = torch.cat([self.video_end.expand(len(fed[0]), -1, -1), self.embed(batch.caption_ids[:, :-1])], 1)
            out.hidden = torch.cat([out.hidden, self._step(fed, tail, kv)], dim=1)
            self.caption_logits([out], t)
        if recon:
            targets = self.target(batch, cache) if batch.targets is None else batch.targets
            self.predict([out], targets, t)
        return out, targets

    def _autoregressive_frames(self, batch: Batch, queries, use_cache: bool, return_attention=False, cache=None):
        if self.dense_tokens:
            raise ValueError(
                "a dense reader (model.dense_tokens > 0) reads no frame with a query: no autoregressive path"
            )
        b, t = batch.frames.shape[:2]
        frames = self.encode(batch.frames) if cache is None else cache
        frame_index = torch.arange(b * t, device=batch.frames.device).view(b, t)
        kv = DynamicCache(config=self.llm.config) if use_cache else None
        fed: list[torch.Tensor] = []  # every input fed so far (the no-cache path re-reads them)
        q = self.q_init.expand(b, -1) if queries is None else queries[:, 0]
        used, tokens, hidden, maps = [], [], [], []
        for i in range(t):  # inherently sequential: frame i's query comes from the state after frame i-1
            z, attention = self.encoder.attend(
                q, frames.index(frame_index[:, i]), self.wants_attention(return_attention)
            )
            new = self.frame_token(z, attention)[:, None]  # [B, 1, H]
            tokens.append(new)
            if i == 0:
                new = torch.cat([self.fine_token.expand(b, -1, -1), new], dim=1)
            hidden.append(self._step(fed, new, kv))
            used.append(q)
            maps.append(attention)
            if i + 1 < t:
                q = self.llm_to_query(hidden[-1][:, -1]) if queries is None else queries[:, i + 1]
        out = Pass(torch.stack(used, dim=1), torch.cat(tokens, dim=1), torch.cat(hidden, dim=1))  # hidden [B,1+T,H]
        if return_attention:  # [B*T, 1, L, heads, P] in frame order, as in the parallel passes
            out.attention = Attention(torch.stack([m.weights for m in maps], dim=1).flatten(0, 1))
        return out, kv, fed

    def _step(self, fed: list[torch.Tensor], new: torch.Tensor, kv) -> torch.Tensor:
        """Feed `new` [B, n, H] after everything in `fed`; returns the n new hidden states."""
        fed.append(new)
        if kv is not None:
            return self.llm.model(inputs_embeds=new, cache=kv, use_cache=True).last_hidden_state
        return self.llm.model(inputs_embeds=torch.cat(fed, dim=1)).last_hidden_state[:, -new.shape[1] :]

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
        b, t = frames.shape[:2]
        end = self.video_end.expand(b, -1, -1)
        if mode == "autoregressive":
            _, kv, fed = self._autoregressive_frames(Batch(frames), None, use_cache=True)
            last = self._step(fed, end, kv)[:, -1]
        elif mode in ("coarse", "fine"):
            iterations = int(mode == "fine")
            final = self.coarse_to_fine(self.encode(frames), b, t, iterations, final_llm=False)[-1]
            mode_token = self.fine_token if iterations else self.coarse_token
            kv = DynamicCache(config=self.llm.config)
            prefix = torch.cat([mode_token.expand(b, -1, -1), final.tokens, end], dim=1)
            last = self.llm.model(inputs_embeds=prefix, cache=kv, use_cache=True).last_hidden_state[:, -1]
        else:
            raise ValueError(f"mode must be coarse, fine or autoregressive, got {mode!r}")
        return self._decode(last, kv, max_new_tokens, temperature, top_p, seed, eos_id)

    def _decode(self, last, kv, max_new_tokens, temperature, top_p, seed, eos_id) -> torch.Tensor:
        """Token by token from the state `last` [B, H] with the LLM's KV cache, until every clip emitted eos."""
        b, device = last.shape[0], last.device
        eos_id = self.llm.config.eos_token_id if eos_id is None else eos_id
        pad_id = self.llm.config.pad_token_id if self.llm.config.pad_token_id is not None else eos_id
        generator = torch.Generator(device=device).manual_seed(seed)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        out = []
        for _ in range(max_new_tokens):
            token = sample(self.llm.lm_head(last).float(), temperature, top_p, generator)  # [B]
            token = token.masked_fill(done, pad_id)
            out.append(token)
            done |= token == eos_id
            if done.all():
                break
            step = self.llm.model(inputs_embeds=self.embed(token[:, None]), cache=kv, use_cache=True)
            last = step.last_hidden_state[:, -1]
        return torch.stack(out, dim=1)


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
