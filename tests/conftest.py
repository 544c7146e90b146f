import json
import os

import pytest
import torch

# One thread for every condiff command a test runs (its CLI calls and the subprocesses it starts): condiff otherwise
# picks threads from the load of the moment (condiff/threads.py), and two trainings that a test compares bit for bit
# (a run against its --resume) could then sum their floats in different orders. test_threads.py clears it itself.
os.environ.setdefault("CONDIFF_THREADS", "1")

TINY = {
    "seed": 0,
    "optim": {"steps": 2, "batch_size": 4, "warmup_steps": 1},
    "unet": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
             "head_channels": 16},
    "text": {"width": 32, "layers": 1, "heads": 2},
    "pipeline": {"schedule": {"num_timesteps": 100}},
    "data": {"resolution": 16},
    "log_every": 1, "sample_every": 0, "checkpoint_every": 1,
}


@pytest.fixture(scope="session")
def tiny_config_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_config_path, tmp_path_factory):
    """A tiny text-to-image model trained for two steps on the world; returns its model folder."""
    from condiff.config import load_json
    from condiff.train.config import TrainConfig
    from condiff.train.trainer import train

    run_dir = tmp_path_factory.mktemp("run")
    train(load_json(TrainConfig, tiny_config_path), run_dir, device="cpu", workers=0)
    return run_dir / "model"


WORDS = ["a", "red", "blue", "circle", "square", "to", "the", "left", "of", "crimson", "teal", "box", "##s"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a 20-token WordPiece vocabulary, saved as a model folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=16)
    BertModel(config, add_pooling_layer=False).save_pretrained(str(folder), safe_serialization=True)
    return folder
