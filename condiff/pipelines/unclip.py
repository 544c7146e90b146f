"""unCLIP (Ramesh et al. 2022) with a decoder that reads CLIP image embeddings: variations, interpolations and text
diffs of images, all through the decoder's `image_embed=` keyword and the text-to-image pipeline's sampler.

The decoder is a text-to-image pipeline whose UNet has `image_embed_dim` (trained with `"unclip": {...}`): the
embedding is added to the timestep embedding and given as 4 extra context tokens. Classifier-free guidance drops
the caption and the embedding together in its unconditional branch (the zero embedding is the dropped one).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import components
from ..components import ComponentType
from ..diffusion.denoiser import Denoiser
from ..diffusion.guidance import ClassifierFreeGuidance
from ..diffusion.samplers import PerSampleNoise, ddim_invert
from ..diffusion.sampling import SamplingOptions, sample, sampling_timesteps
from ..nets.ar_prior import ARPrior
from ..nets.clip import image_embeddings
from ..nets.embedding_prior import clip_text, prior_diffusion
from .base import ComponentSpec, StageSpec
from .editing import Inversion, fit_latent, inversion_options
from .text2image import Text2ImagePipeline


def check_decoder(pipe: Text2ImagePipeline, clip) -> None:
    if not pipe.unet.cfg.image_embed_dim:
        raise ValueError("this model reads no CLIP image embedding (train an unCLIP decoder: \"unclip\" in its config)")
    if pipe.unet.cfg.image_embed_dim != clip.cfg.embed_dim:
        raise ValueError(f"the decoder reads {pipe.unet.cfg.image_embed_dim}-d embeddings, this CLIP makes {clip.cfg.embed_dim}-d")


def decode(pipe: Text2ImagePipeline, embeds: torch.Tensor, prompts: list[str], seeds: list[int],
           opts: SamplingOptions, x: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Images from CLIP image embeddings (B, D) and captions ("" for none); x: fixed initial noise."""
    embeds = embeds.to(pipe.device)
    with torch.no_grad():
        z = pipe.denoise(prompts, seeds, opts, x=x, cond_only={"image_embed": embeds},
                         uncond_only={"image_embed": torch.zeros_like(embeds)}, **kw)
        return pipe.decode(z).cpu()


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation of unit vectors (rows), w in [0, 1]."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)


def invert(pipe, embeds: torch.Tensor, images: torch.Tensor, opts: SamplingOptions, prompt: str = "",
           how: Inversion = Inversion()) -> torch.Tensor:
    """x_T of the decoder's eta = 0 DDIM chain that ends at the images, given their embeddings (and caption): with
    the embedding, DALL-E 2's bipartite latent (z_i, x_T) of an image. It inverts the conditional model (CFG 1):
    the guided chain does not retrace its way back (measured in the README)."""
    opts, embeds = inversion_options(opts).replace(guidance_scale=1.0), embeds.to(pipe.device)
    model = pipe.guided_model([prompt] * len(embeds), opts, {"image_embed": embeds},
                              {"image_embed": torch.zeros_like(embeds)})
    z = fit_latent(pipe, images, how.decoder_steps, how.decoder_lr)
    with torch.no_grad():
        return ddim_invert(model, z, pipe.schedule, sampling_timesteps(pipe.schedule, opts), how.fixed_point_iters)


VARIATION_ETA = 0.5  # the default eta of variations from an inverted image (README: kept scenes against distance)
VARIATION_GUIDANCE = 1.0  # their default CFG scale: the inverted x_T is the conditional model's (README)
VARIATION_CANDIDATES = 4  # candidates drawn per variation, the one nearest the image's embedding kept (README)
MAX_VARIATION_CANDIDATES = 16  # the most the CLI and the API accept


def variation_parameters(eta: float | None, candidates: int) -> dict:
    """What a variations image's infotext records of how it was drawn."""
    how = {"Eta": eta, "Noise": "inverted"} if eta is not None else {"Noise": "seeds"}
    return how | {"Candidates": candidates}


def candidate_seed(seed: int, k: int) -> int:
    """The seed candidate k of an image's seed draws from: the seed itself for k = 0, else a 32-bit hash of (seed,
    k). torch's CPU generator reads only a seed's low 32 bits, so seed + k 2^32 would draw the seed's own noise again
    (it did: the prior's two candidates were one sample twice)."""
    import numpy as np

    return int(seed) if k == 0 else int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])


def variations(pipe, clip, image: torch.Tensor, n: int, seed: int, opts: SamplingOptions, prompt: str = "",
               eta: float | None = VARIATION_ETA, candidates: int = VARIATION_CANDIDATES, **kw) -> torch.Tensor:
    """n images from one image's embedding (DALL-E 2's variations), image i from seed + i; kw: callback=.

    eta in (0, 1] (the paper's way): from the image's own x_T (DDIM inversion under its embedding) by DDIM with
    that eta, the seeds drawing each step's fresh noise. eta -> 0 gives the image back; the larger eta, the more of
    each image comes from the embedding alone. eta None: each image from its seed's noise, the embedding alone.
    candidates: each image is the one of that many draws (`candidate_seed`) whose CLIP embedding is nearest the
    image's, as the prior keeps the best of its candidates; image i still depends on its seed alone."""
    if candidates < 1:
        raise ValueError(f"candidates: must be at least 1, got {candidates}")
    if eta is not None and not 0 < eta <= 1:
        raise ValueError(f"eta: must be in (0, 1] for variations of an inverted image, got {eta}")
    e = image_embeddings(clip, image[:1])
    seeds = [candidate_seed(s, k) for s in range(seed, seed + n) for k in range(candidates)]
    m = len(seeds)
    if eta is None:
        out = decode(pipe, e.expand(m, -1), [prompt] * m, seeds, opts, **kw)
    else:
        x_T = invert(pipe, e, image[:1], opts, prompt).expand(m, -1, -1, -1).contiguous()
        out = decode(pipe, e.expand(m, -1), [prompt] * m, seeds, opts.replace(sampler="ddim", eta=eta), x=x_T, **kw)
    out = out.view(n, candidates, *out.shape[1:])
    best = (image_embeddings(clip, out.flatten(0, 1)).cpu().view(n, candidates, -1) @ e.cpu().T).squeeze(-1).argmax(1)
    return out[torch.arange(n), best]


def _fixed_noise(pipe, n: int, seed: int) -> torch.Tensor:
    return PerSampleNoise([seed])((1, *pipe.sample_shape)).expand(n, -1, -1, -1).contiguous()


def slerp_noise(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation of two Gaussian noises as flat vectors, keeping their norm (as the DDIM paper's
    interpolations of x_T do)."""
    flat = slerp(a.flatten(1), b.flatten(1), w) * (a.flatten(1).norm(dim=1, keepdim=True) * (1 - w)
                                                   + b.flatten(1).norm(dim=1, keepdim=True) * w)
    return flat.view_as(a)


def interpolate(pipe, clip, a: torch.Tensor, b: torch.Tensor, steps: int, seed: int, opts: SamplingOptions,
                prompt: str = "", inverted: bool = True) -> torch.Tensor:
    """`steps` images along the slerp from a's embedding to b's. inverted: the decoder noise x_T slerps too, from
    a's DDIM-inverted x_T to b's, decoded by eta = 0 DDIM, so the path starts and ends at the inputs (up to the
    inversion's error at the CFG scale); else every frame from the seed's one noise (the paper's fixed seed)."""
    ea, eb = image_embeddings(clip, a[:1]), image_embeddings(clip, b[:1])
    ws = [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    e = torch.cat([slerp(ea, eb, w) for w in ws])
    if not inverted:
        return decode(pipe, e, [prompt] * steps, [seed] * steps, opts, x=_fixed_noise(pipe, steps, seed))
    xa, xb = invert(pipe, torch.cat([ea, eb]), torch.cat([a[:1], b[:1]]), opts, prompt).chunk(2)
    x_T = torch.cat([slerp_noise(xa, xb, w) for w in ws])
    return decode(pipe, e, [prompt] * steps, [seed] * steps, opts.replace(sampler="ddim", eta=0.0), x=x_T)


def textdiff(pipe, clip, image: torch.Tensor, source: str, target: str, steps: int, seed: int, opts: SamplingOptions,
             max_angle: float = 0.5, inverted: bool = False) -> torch.Tensor:
    """DALL-E 2's text diffs: slerp the image embedding towards the text diff z_d = norm(z_t(target) - z_t(source))
    by angles 0 .. max_angle of the way. inverted (the paper's way): decoded from the image's own x_T (DDIM
    inversion under z_i and the source caption) by eta = 0 DDIM with the source caption, so frame 0 is the image
    and only the embedding moves; else from the seed's noise with the target caption."""
    for text in (source, target):
        clip.text_encoder.tokenizer.encode(text)
    with torch.no_grad():
        zd = F.normalize(clip.encode_text([target]) - clip.encode_text([source]), dim=-1)
    zi = image_embeddings(clip, image[:1])
    ws = [max_angle * i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
    e = torch.cat([slerp(zi, zd, w) for w in ws])
    if not inverted:
        return decode(pipe, e, [target] * steps, [seed] * steps, opts, x=_fixed_noise(pipe, steps, seed))
    x_T = invert(pipe, zi, image[:1], opts, source).expand(steps, -1, -1, -1).contiguous()
    return decode(pipe, e, [source] * steps, [seed] * steps, opts.replace(sampler="ddim", eta=0.0), x=x_T)


def nearest_candidates(z: torch.Tensor, z_t: torch.Tensor, k: int) -> torch.Tensor:
    """DALL-E 2's trick for both priors: of each caption's k adjacent candidate embeddings (B k, D), the one with the
    highest dot product with its text embedding z_t (B k, D) -> (B, D)."""
    z, z_t = z.view(-1, k, z.shape[-1]), z_t.view(-1, k, z_t.shape[-1])
    best = (z * z_t).sum(-1).argmax(1)  # (B,)
    return z[torch.arange(len(z)), best]


PRIOR_SAMPLING = SamplingOptions(steps=64, guidance_scale=2.0, threshold="none", schedule="leading")  # DALL-E 2: 64


@torch.no_grad()
def prior_embeddings(prior, diffusion, clip, prompts: list[str], seeds: list[int], opts: SamplingOptions,
                     candidates: int = 2) -> torch.Tensor:
    """Unit CLIP image embeddings (B, D) for captions from the diffusion prior (nets/embedding_prior.py), by any
    sampler with classifier-free guidance over the text. DALL-E 2's trick: sample `candidates` per caption and keep
    the one with the higher dot product with the caption's text embedding z_t. Embedding i depends on prompts[i]
    and seeds[i] alone."""
    if candidates < 1:
        raise ValueError(f"candidates: must be at least 1, got {candidates}")
    if opts.threshold.value != "none":
        raise ValueError(f"threshold: the prior samples embeddings, not pixels; use none, got {opts.threshold.value}")
    B, k = len(prompts), candidates
    text = clip_text(clip, [p for p in prompts for _ in range(k)])  # (B k, ...): candidates of a caption adjacent
    cond = {"text_tokens": text["tokens"], "text_mask": text["mask"], "text_embed": text["embed"]}
    null = torch.ones(B * k, dtype=torch.bool, device=clip.device)
    denoiser = Denoiser.from_config(prior, diffusion)
    model = ClassifierFreeGuidance(denoiser, opts.guidance_scale, cond | {"drop": ~null}, cond | {"drop": null})
    noise = PerSampleNoise([candidate_seed(s, j) for s in seeds for j in range(k)])
    x = noise((B * k, prior.cfg.embed_dim), clip.device)
    z = F.normalize(sample(model, denoiser.schedule, x, noise, opts).float(), dim=-1)
    return nearest_candidates(z, text["embed"], k)


AR_PRIOR_GUIDANCE = 2.0  # the autoregressive prior's CFG scale on its logits (DALL-E 2 used guidance on both priors)
AR_PRIOR_TEMPERATURE = 1.0


def guided_logits(prior: ARPrior, codes: torch.Tensor, text: dict, dot: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on the next code's logits: l_u + s (l_c - l_u), both branches in one batch."""
    n = len(codes)
    drop = torch.arange(2 * n, device=codes.device) >= n
    two = {k: torch.cat([v, v]) for k, v in text.items()}
    logits = prior(torch.cat([codes, codes]), two["tokens"], two["mask"], two["embed"], torch.cat([dot, dot]), drop)
    cond, uncond = logits[:, -1].float().chunk(2)
    return uncond + scale * (cond - uncond)


def categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """A draw per row of softmax(logits / temperature) by inverting its CDF at the uniforms u (B,): each row's draw
    depends on its own uniform alone."""
    cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
    return torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None]).squeeze(1).clamp(max=logits.shape[-1] - 1)


@torch.no_grad()
def ar_prior_embeddings(prior: ARPrior, clip, prompts: list[str], seeds: list[int],
                        guidance_scale: float = AR_PRIOR_GUIDANCE, candidates: int = 2,
                        temperature: float = AR_PRIOR_TEMPERATURE) -> torch.Tensor:
    """Unit CLIP image embeddings (B, D) for captions from the autoregressive prior (nets/ar_prior.py): the
    dot-product token drawn from the top half of the training distribution, then the k codes one by one with
    classifier-free guidance, decoded through the PCA basis. As with the diffusion prior, `candidates` per caption
    and the one nearest z_t kept. Embedding i depends on prompts[i] and seeds[i] alone: every draw inverts the CDF at
    a uniform from its own seed's generator."""
    if candidates < 1:
        raise ValueError(f"candidates: must be at least 1, got {candidates}")
    if temperature <= 0:
        raise ValueError(f"temperature: must be positive, got {temperature}")
    B, k, K = len(prompts), candidates, prior.cfg.components
    text = clip_text(clip, [p for p in prompts for _ in range(k)])
    gens = [torch.Generator().manual_seed(candidate_seed(s, j)) for s in seeds for j in range(k)]
    u = torch.stack([torch.rand(K + 1, generator=g, dtype=torch.float64) for g in gens]).to(clip.device)  # (B k, K+1)
    dot = prior.dot_bucket(prior.dot_at(0.5 + 0.5 * u[:, 0]))  # the top half of the training dot products
    codes = torch.zeros(B * k, 0, dtype=torch.long, device=clip.device)
    for j in range(K):
        nxt = categorical(guided_logits(prior, codes, text, dot, guidance_scale), u[:, j + 1], temperature)
        codes = torch.cat([codes, nxt[:, None]], 1)
    return nearest_candidates(prior.decode(codes), text["embed"], k)


PRIOR_SEED_OFFSET = 2 ** 31  # the prior of image seed s draws from s + offset, so its noise is not the decoder's


def prior_type(folder) -> ComponentType:
    """The type of a prior folder (diffusion or autoregressive); a one-line error for any other component."""
    kind = components.guess_type(folder)
    if kind not in (ComponentType.EMBEDDING_PRIOR, ComponentType.AR_PRIOR):
        raise ValueError(f"'{folder}' holds a {kind.value} component, not an unCLIP prior (embedding_prior or ar_prior)")
    return kind


class UnCLIPPipeline(Text2ImagePipeline):
    """DALL-E 2's text -> image: the diffusion prior samples a CLIP image embedding for the caption, and the decoder
    draws it (with the caption, as GLIDE-style conditioning). Without a prior (`prior=None`) the caption's CLIP text
    embedding goes to the decoder directly: the paper's prior-free baseline. Image i depends on its prompt and seed."""
    kind = "unclip"

    def __init__(self, text_encoder, unet, cfg, clip, prior=None, prior_cfg=None, autoencoder=None, sampling=None,
                 prior_sampling: SamplingOptions | None = None, candidates: int = 2):
        super().__init__(text_encoder, unet, cfg, autoencoder, sampling)
        check_decoder(self, clip)
        if prior is not None and prior.cfg.embed_dim != clip.cfg.embed_dim:
            raise ValueError(f"the prior makes {prior.cfg.embed_dim}-d embeddings, this CLIP {clip.cfg.embed_dim}-d")
        self.clip, self.prior, self.candidates = clip, prior, candidates
        self.spec.kind = self.kind
        self.parts["clip"] = clip
        self.spec.components.append(ComponentSpec("clip", ComponentType.CLIP))
        if isinstance(prior, ARPrior):  # no diffusion stage: its sampling is guided_logits at AR_PRIOR_GUIDANCE
            self.parts["prior"] = prior
            self.spec.components.append(ComponentSpec("prior", ComponentType.AR_PRIOR))
        elif prior is not None:
            self.parts["prior"] = prior
            self.spec.components.append(ComponentSpec("prior", ComponentType.EMBEDDING_PRIOR))
            self.spec.stages.append(StageSpec("prior", "prior", prior_cfg or prior_diffusion(),
                                              prior_sampling or PRIOR_SAMPLING))

    @classmethod
    def from_parts(cls, parts, spec) -> "UnCLIPPipeline":
        base = spec.stage("base")
        prior = next((s for s in spec.stages if s.name == "prior"), None)
        return cls(parts["text_encoder"], parts[base.unet], base.diffusion, parts["clip"], parts.get("prior"),
                   prior and prior.diffusion, parts.get("autoencoder"), base.sampling, prior and prior.sampling)

    @classmethod
    def compose(cls, decoder, clip, prior=None) -> "UnCLIPPipeline":
        """An unCLIP decoder folder, the CLIP folder it reads and (optionally) a prior folder, diffusion or
        autoregressive (its config says which), as one."""
        dec = Text2ImagePipeline.from_pretrained(decoder)
        p = components.load(prior_type(prior), prior) if prior is not None else None
        pipe = cls(dec.text_encoder, dec.unet, dec.cfg, components.load("clip", clip), p, None, dec.autoencoder,
                   dec.defaults)
        pipe.spec.vocabulary = dec.spec.vocabulary
        return pipe

    def without_prior(self) -> "UnCLIPPipeline":
        """The same decoder fed the caption's CLIP text embedding (the paper's prior-free baseline)."""
        return self.with_prior(None)

    def with_prior(self, prior) -> "UnCLIPPipeline":
        """The same decoder and CLIP with another prior (a loaded diffusion or autoregressive one, or None)."""
        pipe = UnCLIPPipeline(self.text_encoder, self.unet, self.cfg, self.clip, prior, None, self.autoencoder,
                              self.defaults, candidates=self.candidates)
        pipe.spec.vocabulary = self.spec.vocabulary
        return pipe

    def check(self, prompts, opts, *other_steps) -> None:
        super().check(prompts, opts, *other_steps)
        for p in prompts:
            self.clip.text_encoder.tokenizer.encode(p)

    def embeddings(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """The CLIP image embedding the decoder draws for each caption: the prior's sample, or z_t without one."""
        if self.prior is None:
            with torch.no_grad():
                return self.clip.encode_text(prompts)
        if isinstance(self.prior, ARPrior):
            return ar_prior_embeddings(self.prior, self.clip, prompts, [s + PRIOR_SEED_OFFSET for s in seeds],
                                       candidates=self.candidates)
        stage = self.spec.stage("prior")
        return prior_embeddings(self.prior, stage.diffusion, self.clip, prompts,
                                [s + PRIOR_SEED_OFFSET for s in seeds], stage.sampling, self.candidates)

    def denoise(self, prompts, seeds, opts, *args, cond_only=None, uncond_only=None, **kw):
        cond_only, uncond_only = dict(cond_only or {}), dict(uncond_only or {})
        if "image_embed" not in cond_only:
            e = self.embeddings(prompts, seeds).to(self.device)
            cond_only["image_embed"], uncond_only["image_embed"] = e, torch.zeros_like(e)
        return super().denoise(prompts, seeds, opts, *args, cond_only=cond_only, uncond_only=uncond_only, **kw)
