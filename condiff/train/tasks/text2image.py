"""The text-to-image diffusion task: text encoder + UNet trained together with condition dropout (for CFG)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ... import components
from ...config import ConfigError, load_json
from ...data.imagefolder import ImageFolder, read_metadata
from ...data.real import write as write_images
from ...data.masks import inpaint_inputs, training_masks
from ...diffusion.loss import (
    diffusion_loss,
    hybrid_loss,
    min_snr_weight,
    sample_timesteps,
)
from ...diffusion.sampling import SamplingOptions
from ...diffusion.schedule import NoiseSchedule
from ...eval.grid import save_judged_grid
from ...formats import embeddings
from ...formats import lora as lora_format
from ...catalogue import shipped_name
from ...fs import replace_dir
from ...nets.autoencoder import AutoencoderConfig
from ...nets.clip import CLIPConfig, image_embeddings, load_clip
from ...nets import lora
from ...nets.grounding import grounding_inputs
from ...nets.pretrained_text import (
    FrozenTextCache,  # noqa: F401  (re-exported: the upsampler and layout-prior tasks use it)
    PretrainedTextEncoder,
)
from ...nets.text import TextEncoder
from ...nets.unet import UNet
from ...pipelines import requests
from ...pipelines.base import read_spec
from ...pipelines.vocabulary import vocabulary_of
from ...pipelines.text2image import Text2ImagePipeline
from ..distributed import barrier
from ..config import LossWeighting, TrainConfig
from ..task import TaskDefaults

LORA_NAME = "lora"  # the trained adapter's name on the UNet's layers
SAMPLE_PROMPTS = [
    "a red circle", "a small blue square", "a large yellow triangle", "three green circles",
    "a white square and an orange circle", "a red circle to the left of a blue square",
    "a cyan triangle above a purple square", "a purple triangle",
]


class TextToImageModel(nn.Module):
    """The trained components, held together for one optimizer and one EMA (a frozen text encoder is not one)."""

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.text_encoder = TextEncoder(cfg.text) if cfg.pretrained_text is None else None
        self.unet = UNet(cfg.unet)


class Text2ImageTask(TaskDefaults):
    name, config_cls = "text2image", TrainConfig

    def build(self, cfg: TrainConfig, data, resume: bool) -> nn.Module:
        if cfg.loss.min_snr_gamma <= 0:
            raise ConfigError(f"loss.min_snr_gamma must be positive, got {cfg.loss.min_snr_gamma}")
        if cfg.pretrained_text is None and not cfg.text.vocab:
            cfg.text.vocab = list(data.vocab)
        cfg.unet.context_dim = cfg.text.width if cfg.pretrained_text is None else cfg.pretrained_text.width
        cfg.unet.resolution = cfg.data.resolution
        if cfg.autoencoder:
            ae = autoencoder_config(cfg)
            cfg.unet.in_channels, cfg.unet.resolution = ae.latent_channels, cfg.data.resolution // ae.factor
        cfg.unet.out_channels = cfg.unet.in_channels * (2 if cfg.pipeline.learn_sigma else 1)
        if cfg.inpaint is not None:  # GLIDE: the mask and the masked image, concatenated to x_t
            try:
                cfg.inpaint.validate()
            except ValueError as e:
                raise ConfigError(str(e)) from None
            cfg.unet.extra_in_channels = cfg.unet.in_channels + 1
        if cfg.unclip is not None:
            if not (Path(cfg.unclip.clip) / "config.json").is_file():
                raise ConfigError(f"unclip.clip: '{cfg.unclip.clip}' is not a condiff CLIP folder (no config.json)")
            cfg.unet.image_embed_dim = load_json(CLIPConfig, Path(cfg.unclip.clip) / "config.json").embed_dim
        if cfg.grounding is not None:
            if not hasattr(data, "boxes"):
                raise ConfigError("grounding: this data source has no boxes")
            cfg.unet.grounding_dim, cfg.unet.grounding_token_dim = cfg.unet.context_dim, cfg.grounding.token_dim
            cfg.unet.grounding_max_boxes = cfg.grounding.max_boxes
            cfg.unet.grounding_map_channels = cfg.grounding.map_channels
        model = TextToImageModel(cfg)
        if cfg.init.from_model and not resume:
            init_from_pretrained(model, cfg)
        if cfg.lora is not None or cfg.textual_inversion is not None:  # the base frozen: only what is added trains
            if not cfg.init.from_model:
                raise ConfigError(f"{'lora' if cfg.lora is not None else 'textual_inversion'}: set init.from_model "
                                  "to the model it adds to")
            model.requires_grad_(False)
        if cfg.prior_preservation is not None and not cfg.init.from_model:
            raise ConfigError("prior_preservation: set init.from_model (the model that draws the class images)")
        if cfg.textual_inversion is not None:
            if cfg.pretrained_text is None:
                raise ConfigError("textual_inversion: needs a frozen pretrained text encoder (pretrained_text)")
            ti = cfg.textual_inversion
            try:
                start = PretrainedTextEncoder(cfg.pretrained_text).embedding_of(ti.init_word)
            except ValueError as e:
                raise ConfigError(f"textual_inversion.init_word: {e}") from None
            model.concept = nn.Parameter(start.expand(ti.vectors, -1).clone())
        if cfg.lora is not None:  # LoRA: only the adapter's A and B train
            try:
                lora.add_adapter(model.unet, LORA_NAME, cfg.lora.targets, cfg.lora.rank, cfg.lora.alpha)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        return model

    def prepare(self, run) -> None:
        cfg = run.cfg
        run.state["schedule"] = NoiseSchedule.from_config(cfg.pipeline.schedule)
        if cfg.textual_inversion is not None:  # the encoder reads the trained vectors: no cache of its states
            encoder = PretrainedTextEncoder(cfg.pretrained_text).to(run.device)
            encoder.add_concepts({cfg.textual_inversion.token: run.model.concept})
            run.state["text"] = encoder
        elif cfg.pretrained_text is not None:
            run.state["text"] = FrozenTextCache(PretrainedTextEncoder(cfg.pretrained_text).to(run.device))
        if cfg.autoencoder:
            ae = components.load("autoencoder", cfg.autoencoder)  # the weights, once; build read only the config
            run.state["autoencoder"] = ae.to(run.device).requires_grad_(False)
            run.state["latents"] = LatentCache(run.state["autoencoder"].encode)
        if cfg.unclip is not None:
            run.state["clip"] = load_clip(cfg.unclip.clip).to(run.device).eval().requires_grad_(False)
        if cfg.prior_preservation is not None:
            run.state["class_data"] = class_images(run)

    def text_encoder(self, run, ema: bool = False):
        """What encodes captions: the (EMA) learned encoder, the frozen one behind its cache, or the frozen one
        reading the (EMA) textual-inversion vectors."""
        if run.cfg.textual_inversion is not None:
            run.state["text"].added = [(run.ema.model if ema else run.model).concept]
            return run.state["text"]
        if "text" in run.state:
            return run.state["text"]
        return (run.ema.model if ema else run.model).text_encoder

    def extras(self, run, raw) -> dict:
        wants = run.cfg.grounding is not None or (run.cfg.inpaint is not None and run.cfg.inpaint.p_object > 0)
        return {"box_lists": run.data.boxes(raw)} if wants else {}

    def grounding(self, run, box_lists: list[list[dict]], device) -> dict:
        """GLIGEN's keywords; a scene's boxes are dropped with p_drop (its grounding-free, CFG-able branch)."""
        g = run.cfg.grounding
        drop = (torch.rand(len(box_lists), generator=run.generator) < g.p_drop).tolist()
        kept = [[] if d else boxes for boxes, d in zip(box_lists, drop)]
        return grounding_inputs(lambda p: self.text_encoder(run).encode(p, device), kept, g.max_boxes, device)

    def loss(self, run, images: torch.Tensor, captions: list[str], box_lists: list | None = None) -> torch.Tensor:
        """The diffusion loss of the batch; under prior preservation, plus prior_weight times that of as many of the
        model's own class images (DreamBooth's L_instance + lambda L_prior)."""
        loss = self.batch_loss(run, images, captions, box_lists)
        if "class_data" in run.state:
            data, pp = run.state["class_data"], run.cfg.prior_preservation
            raw = data.raw(run.cfg.seed + 1, run.step, len(captions))
            class_images_, class_captions = data.materialize(raw, images.device)
            boxes = data.boxes(raw) if box_lists is not None else None
            loss = loss + pp.prior_weight * self.batch_loss(run, class_images_, class_captions, boxes)
        return loss

    def batch_loss(self, run, images: torch.Tensor, captions: list[str], box_lists: list | None = None) -> torch.Tensor:
        cfg, schedule, generator, model = run.cfg, run.state["schedule"], run.generator, run.model
        B, device = len(captions), images.device
        p_caption = cfg.unclip.p_drop_caption if cfg.unclip is not None else cfg.optim.p_uncond
        drop = torch.rand(B, generator=generator) < p_caption  # condition dropout (CFG)
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        t = sample_timesteps(B, schedule.T, generator, device)
        cond = {}
        if cfg.unclip is not None:  # DALL-E 2's decoder: the CLIP image embedding, zeroed with p_drop_embed
            cond["image_embed"] = image_embeddings(run.state["clip"], images)
            keep = (torch.rand(B, generator=generator) >= cfg.unclip.p_drop_embed).to(device)
            cond["image_embed"] = cond["image_embed"] * keep[:, None].to(cond["image_embed"].dtype)
        if cfg.inpaint is not None:
            masks = training_masks(generator, B, images.shape[-1], cfg.inpaint, box_lists).to(device)
            with torch.no_grad():
                cond = inpaint_inputs(images, masks, run.state["autoencoder"].encode if "autoencoder" in run.state else None)
        if "autoencoder" in run.state:  # latent diffusion: x0 is the posterior mean, scaled to unit variance
            with torch.no_grad():
                images = run.state["latents"](images)
        eps = torch.randn(images.shape, generator=generator).to(device)
        cond |= self.text_encoder(run).encode(captions, device)
        if box_lists is not None and cfg.grounding is not None:
            cond |= self.grounding(run, box_lists, device)
        loss_fn = hybrid_loss if cfg.pipeline.learn_sigma else diffusion_loss
        weight = None
        if LossWeighting(cfg.loss.weighting) is LossWeighting.MIN_SNR:
            weight = min_snr_weight(schedule, t, cfg.pipeline.prediction, cfg.loss.min_snr_gamma)
        return loss_fn(model.unet, schedule, cfg.pipeline.prediction, images, t, eps, weight=weight, **cond)

    def pipeline(self, run):
        m, text = run.ema.model, self.text_encoder(run, ema=True)
        text = text.encoder if isinstance(text, FrozenTextCache) else text
        base = read_spec(Path(run.cfg.init.from_model)) if run.cfg.init.from_model else None
        pipe = Text2ImagePipeline(text, m.unet, run.cfg.pipeline, run.state.get("autoencoder"),
                                  base.stage("base").sampling if base else None)  # a fine-tune samples as its base
        pipe.spec.vocabulary = vocabulary_of(run.data.vocab, base.vocabulary if base else None)  # and knows its words
        return pipe

    def export(self, run, folder: Path) -> None:
        cfg = run.cfg
        if cfg.lora is None and cfg.textual_inversion is None:
            return self.pipeline(run).save_pretrained(folder)
        tmp = folder.with_name(folder.name + ".tmp")  # what was added alone: a diffusers LoRA / embedding folder
        tmp.mkdir(parents=True, exist_ok=True)
        base = {"condiff_base_model": shipped_name(cfg.init.from_model)}
        if cfg.lora is not None:
            lora_format.write(tmp / lora_format.WEIGHT_NAME, {"unet": lora_format.entries_of(run.ema.model.unet, LORA_NAME)},
                              base)
        if cfg.textual_inversion is not None:
            embeddings.write(tmp / embeddings.WEIGHT_NAME, {cfg.textual_inversion.token: run.ema.model.concept}, base)
        replace_dir(tmp, folder)

    def sample(self, run, prompts: list[str] = SAMPLE_PROMPTS, steps: int = 25) -> Path:
        """EMA samples for fixed prompts and seeds; framed by the oracle's verdict when the prompts are world captions."""
        pipe = self.pipeline(run)
        try:
            pipe.text_encoder.tokenizer(prompts)
        except ValueError:  # a model of other data: sample its own first captions instead
            prompts = run.data.batch(run.cfg.seed, 0, len(prompts))[1]
        images = pipe(prompts, list(range(len(prompts))), SamplingOptions(steps=steps)).cpu()
        return save_judged_grid(images, prompts, run.folder / "samples" / f"step_{run.step:08d}.png")


class LatentCache:
    """The frozen autoencoder's latent of each training image, computed once: encode() is the posterior mean, a pure
    function of the image, so a repeated image is looked up by its bytes instead of encoded again (an image folder
    that fits in memory is encoded once in its first epoch). Each image is encoded alone, so its latent does not
    depend on the batch it first came in, and a resumed run computes the same bits. At most max_mb of latents are
    kept; past that, new images are encoded every time."""

    def __init__(self, encode, max_mb: int = 1024):
        self.encode, self.max_bytes, self.bytes, self.latents = encode, max_mb * 2 ** 20, 0, {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        keys = [hashlib.blake2b(image.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
                for image in images]
        out = []
        for key, image in zip(keys, images):
            z = self.latents.get(key)
            if z is None:
                z = self.encode(image[None])[0]
                if self.bytes + z.nbytes <= self.max_bytes:
                    self.latents[key], self.bytes = z, self.bytes + z.nbytes
            out.append(z)
        return torch.stack(out)


def class_images(run):
    """DreamBooth's class images: the folder of prior_preservation, filled up to class_images by the starting model
    (init.from_model) drawing class_prompt from seeds 0, 1, ... (with the boxes its layout stage drew them from), and
    read as an image folder."""
    cfg, pp = run.cfg, run.cfg.prior_preservation
    folder = Path(pp.class_folder) if pp.class_folder else run.folder / "class_images"
    have = len(read_metadata(folder)) if (folder / "metadata.jsonl").is_file() else 0
    if have < pp.class_images and run.world.main:
        pipe = Text2ImagePipeline.from_pretrained(cfg.init.from_model).to(run.device)
        req = requests.Txt2ImgRequest([pp.class_prompt] * pp.class_images, list(range(pp.class_images)), pipe.defaults,
                                      batch_size=16)
        samples = ((f"{g.seed:05d}.png", Image.fromarray(g.pixels), g.prompt, *([g.layout] if g.layout else []))
                   for batch in requests.txt2img(pipe, req, requests.ModelTag("class"), progress=True) for g in batch)
        shutil.rmtree(folder, ignore_errors=True)
        write_images(samples, folder, f"Drawn by {shipped_name(cfg.init.from_model)} for '{pp.class_prompt}'.\n", False)
    barrier(run.world)
    return ImageFolder(str(folder), cfg.data.resolution)


def autoencoder_config(cfg: TrainConfig):
    """The run's autoencoder's config alone (build needs its shape, not its weights), checked against the data."""
    folder = Path(cfg.autoencoder)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"autoencoder: '{folder}' is not an autoencoder folder (no config.json)")
    ae = load_json(AutoencoderConfig, folder / "config.json")
    if cfg.data.resolution % ae.factor:
        raise ConfigError(f"data.resolution {cfg.data.resolution} is not divisible by the autoencoder's factor {ae.factor}")
    return ae


def widen_input_conv(state: dict, target: dict, at: int | None = None, count: int | None = None) -> dict:
    """A first convolution with more input channels (GLIDE's inpainting fine-tune, a layout map) keeps the trained
    weights and gives the `count` new channels, inserted at channel `at` (default: all missing ones, at the end),
    zero weights, so the network's output is unchanged until they learn."""
    key = "inputs.0.0.weight"
    old, new = state[key], target[key]
    at = old.shape[1] if at is None else at
    count = new.shape[1] - old.shape[1] if count is None else count
    if count:
        assert old.shape[0] == new.shape[0] and count > 0 and old.shape[2:] == new.shape[2:]
        zeros = old.new_zeros(old.shape[0], count, *old.shape[2:])
        state = dict(state, **{key: torch.cat([old[:, :at], zeros, old[:, at:]], dim=1)})
    return state


def widen_output_conv(state: dict, target: dict) -> dict:
    """The last convolution of a UNet that learns the variance too (improved DDPM's hybrid loss) from a fixed-variance
    one: eps's channels keep their weights, v's are appended with zero weights and bias (v = 0: log Sigma halfway
    between log beta_tilde and log beta), so eps_hat is unchanged."""
    for key in ("out.2.weight", "out.2.bias"):
        old, new = state[key], target[key]
        assert new.shape[0] == 2 * old.shape[0] and new.shape[1:] == old.shape[1:]
        state = dict(state, **{key: torch.cat([old, old.new_zeros(old.shape)])})
    return state


def init_from_pretrained(model: TextToImageModel, cfg: TrainConfig) -> None:
    """Load a saved pipeline's text encoder and UNet into the fresh model; their configs must match the run's."""
    folder = Path(cfg.init.from_model)
    if not (folder / "pipeline.json").exists():
        raise ConfigError(f"init.from_model: '{folder}' is not a saved pipeline (no pipeline.json)")
    pretrained = Text2ImagePipeline.from_pretrained(folder)
    pairs = [("text_encoder", model.text_encoder, pretrained.text_encoder)] if model.text_encoder is not None else []
    for name, mine, theirs in pairs + [("unet", model.unet, pretrained.unet)]:
        diff = [k for k in vars(mine.cfg) if getattr(mine.cfg, k) != getattr(theirs.cfg, k)]
        if diff == ["causal_layers"] and mine.cfg.causal_layers > theirs.cfg.causal_layers:
            diff = []  # new causal layers start as the identity (zero residual branches): the output is unchanged
        adds_grounding = name == "unet" and mine.cfg.grounding_dim and not theirs.cfg.grounding_dim
        if adds_grounding:  # GLIGEN: gated layers (gamma = 0) added to a trained UNet leave its output unchanged
            diff = [k for k in diff if not k.startswith("grounding_")]
        adds_map = name == "unet" and mine.cfg.grounding_map_channels > getattr(theirs.cfg, "grounding_map_channels", 0)
        if adds_map:  # a layout map added: new input channels start at zero weight, so the output is unchanged
            diff = [k for k in diff if k != "grounding_map_channels"]
        adds_embed = name == "unet" and mine.cfg.image_embed_dim and not getattr(theirs.cfg, "image_embed_dim", 0)
        if adds_embed:  # unCLIP's decoder from a text-to-image UNet: the embedding's layers are new (zero-initialised)
            diff = [k for k in diff if not k.startswith("image_embed")]
        adds_inputs = name == "unet" and mine.cfg.extra_in_channels > theirs.cfg.extra_in_channels
        if adds_inputs:  # GLIDE's inpainting fine-tune: mask and masked image channels, zero-initialised
            diff = [k for k in diff if k != "extra_in_channels"]
        adds_variance = (name == "unet" and cfg.pipeline.learn_sigma and not pretrained.cfg.learn_sigma
                         and mine.cfg.out_channels == 2 * theirs.cfg.out_channels)
        if adds_variance:  # improved DDPM's learned range from a fixed-variance model: v's channels start at zero
            diff = [k for k in diff if k != "out_channels"]
        if diff:
            raise ConfigError(f"init.from_model: {name} of '{folder}' differs from the config in {', '.join(diff)}")
        state = {k: v.float() for k, v in theirs.state_dict().items()}
        if adds_inputs:  # the new conditioning channels sit after x_t's, before any layout map
            state = widen_input_conv(state, mine.state_dict(), at=theirs.cfg.in_channels + theirs.cfg.extra_in_channels,
                                     count=mine.cfg.extra_in_channels - theirs.cfg.extra_in_channels)
        if adds_map:
            state = widen_input_conv(state, mine.state_dict())
        if adds_variance:
            state = widen_output_conv(state, mine.state_dict())
        missing, unexpected = mine.load_state_dict(state, strict=False)
        new = {f"causal.{i}." for i in range(getattr(theirs.cfg, "causal_layers", 0), getattr(mine.cfg, "causal_layers", 0))}
        missing = [k for k in missing if not (adds_grounding and (k.startswith("grounding.") or ".gated." in k))
                   and not (adds_map and k.startswith("layout_map."))
                   and not (adds_embed and k.startswith("image_embed_"))]
        if unexpected or any(not any(k.startswith(n) for n in new) for k in missing):
            raise ConfigError(f"init.from_model: {name} of '{folder}' does not fit: missing {missing}, unexpected {unexpected}")
    if model.text_encoder is not None:
        with torch.no_grad():
            model.text_encoder.embed.weight.mul_(cfg.init.text_token_scale)
