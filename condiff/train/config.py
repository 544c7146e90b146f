"""Training configs: one dataclass per component, composed; saved as JSON beside the run.

The fields every task shares (seed, data, optim, precision, log/checkpoint cadence) have the same names in every
task's config, which is all the trainer reads.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..data import DataConfig
from ..data.masks import InpaintConfig
from ..diffusion.denoiser import DiffusionConfig
from ..nets.lora import LoRAConfig
from ..nets.pretrained_text import PretrainedTextConfig
from ..nets.text import TextEncoderConfig
from ..nets.unet import UNetConfig


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"  # autocast; on CPU only where the machine has fast bf16 (see README)


class LRSchedule(str, enum.Enum):
    CONSTANT = "constant"  # after warm-up
    COSINE = "cosine"  # after warm-up, half a cosine from lr down to 0 at the last step


class LossWeighting(str, enum.Enum):
    UNIFORM = "uniform"  # L_simple: every timestep weighted 1
    MIN_SNR = "min_snr"  # Min-SNR-gamma (Hang et al. 2023): w_t = min(SNR_t, gamma) / SNR_t for epsilon


def defaults(cls, **values):
    """A dataclass field whose default is cls(**values), built afresh for each config."""
    return field(default_factory=lambda: cls(**values))


@dataclass
class LossConfig:
    weighting: LossWeighting = LossWeighting.UNIFORM
    min_snr_gamma: float = 5.0


@dataclass
class InitConfig:
    """Fine-tuning: start from a saved pipeline instead of random weights (ignored on --resume)."""
    from_model: str | None = None  # a pipeline folder: a run's model/ or condiff/weights/NAME
    text_token_scale: float = 1.0  # multiply the loaded token embeddings; < 1 lets position embeddings count again


@dataclass
class OptimConfig:
    steps: int = 10000
    batch_size: int = 128
    lr: float = 4e-4
    warmup_steps: int = 500
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.9995
    p_uncond: float = 0.1  # condition dropout for classifier-free guidance
    micro_batches: int | str = "auto"  # the global batch_size split into this many shards: gradient accumulation on
    # one process, split over the processes of a launched run (train/distributed.py); the same number trains the same
    # weights on any process count that divides it. "auto": the process count, or its smallest multiple that divides
    # batch_size (1 on one process)

    def __post_init__(self):
        if isinstance(self.micro_batches, str) and self.micro_batches != "auto":
            raise ValueError(f"micro_batches: 'auto' or a positive integer, got {self.micro_batches[:20]!r}")


@dataclass
class RunSettings:
    """The cadence fields every task's config ends with (the trainer reads them by name)."""
    precision: Precision = Precision.FP32
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0  # a grid of samples every N steps, for kinds that draw (0: never)
    snapshot_every: int = 0  # also keep the EMA model as snapshots/step_N every N steps (learning curves); 0: never
    channels_last: bool = False  # NHWC memory layout for the convolutions (faster on GPUs with bf16)
    compile: bool = False  # torch.compile each trained module in place (state-dict keys unchanged)


@dataclass
class GroundingConfig:
    """Box grounding (GLIGEN): the data's (phrase, box) records as gated-attention tokens."""
    max_boxes: int = 4
    token_dim: int = 256
    p_drop: float = 0.1  # drop a scene's boxes (independently of its caption): grounding-free branch for CFG
    map_channels: int = 0  # > 0: also paint the boxes as a layout map of this many (+1) channels at the UNet's input


@dataclass
class UnclipConfig:
    """unCLIP's decoder (DALL-E 2): the UNet also reads the frozen CLIP's image embedding of the training image."""
    clip: str = "condiff/weights/clip64"  # a condiff CLIP folder (shipped names resolve in the package)
    p_drop_embed: float = 0.1  # the embedding zeroed (CFG's null), as the paper trains
    p_drop_caption: float = 0.5  # the caption dropped (replaces optim.p_uncond)


@dataclass
class TextualInversionConfig:
    """Textual inversion (Gal et al. 2022): learn only a new token's input embedding(s) in the frozen text encoder."""
    token: str = "<sks>"  # what prompts will say
    init_word: str = "shape"  # the vectors start at this word's embedding (its first WordPiece)
    vectors: int = 1  # vectors the token stands for

    def __post_init__(self):
        if not isinstance(self.token, str) or not self.token.strip() or any(c.isspace() for c in self.token):
            raise ValueError(f"textual_inversion.token must be one word without spaces, got {self.token!r}")
        if not isinstance(self.vectors, int) or isinstance(self.vectors, bool) or not 1 <= self.vectors <= 75:
            raise ValueError(f"textual_inversion.vectors must be 1 to 75, got {self.vectors!r}")


@dataclass
class PriorPreservationConfig:
    """DreamBooth's prior preservation (Ruiz et al. 2023): images the starting model itself draws for the class
    prompt, trained on beside the subject's, with weight prior_weight, so that the class keeps its look."""
    class_prompt: str = "a shape"
    class_images: int = 100  # drawn once (seeds 0 ..) into class_folder when it holds fewer
    prior_weight: float = 1.0
    class_folder: str | None = None  # default: the run's class_images/

    def __post_init__(self):
        if not isinstance(self.class_images, int) or isinstance(self.class_images, bool) or not 1 <= self.class_images <= 100_000:
            raise ValueError(f"prior_preservation.class_images must be 1 to 100,000, got {self.class_images!r}")
        if not (isinstance(self.prior_weight, (int, float)) and 0 <= self.prior_weight <= 100):
            raise ValueError(f"prior_preservation.prior_weight must be between 0 and 100, got {self.prior_weight!r}")


@dataclass
class TrainConfig(RunSettings):
    """A text-to-image diffusion model (text encoder + UNet): configs/base32.json."""
    model: str = "text2image"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # the learned encoder, trained with the UNet
    pretrained_text: PretrainedTextConfig | None = None  # a frozen pretrained encoder instead of `text` (Imagen)
    autoencoder: str | None = None  # a trained autoencoder folder: diffusion runs in its latent space (LDM)
    grounding: GroundingConfig | None = None  # train with the data's boxes (layout grounding)
    inpaint: InpaintConfig | None = None  # an inpainting model (GLIDE): random masks, mask= and masked_image= inputs
    unclip: UnclipConfig | None = None  # an unCLIP decoder: image_embed= from a frozen CLIP
    unet: UNetConfig = field(default_factory=UNetConfig)
    pipeline: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    init: InitConfig = field(default_factory=InitConfig)
    lora: LoRAConfig | None = None  # train only a LoRA adapter on the UNet of init.from_model (exported as a file)
    textual_inversion: TextualInversionConfig | None = None  # train only a new token's embedding (exported as a file)
    prior_preservation: PriorPreservationConfig | None = None  # DreamBooth: also train on the model's own class images
    sample_every: int = 2000  # (RunSettings' fields, with this kind's defaults)
    checkpoint_every: int = 1000
