import pytest
import torch

from condiff.nets.text import TextEncoder, TextEncoderConfig, Tokenizer, VocabularyError
from condiff.nets.unet import UNet, UNetConfig
from condiff.world.grammar import VOCABULARY

SMALL = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), head_channels=16,
             context_dim=32)


def _text():
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY), width=32, layers=1, heads=2)).eval()


def test_tokenizer():
    tok = Tokenizer(list(VOCABULARY), 16)
    ids, mask = tok(["a red circle", ""])
    assert mask.sum(1).tolist() == [5, 2]  # <bos> a red circle <eos>; the null caption is <bos> <eos>
    assert tok.itos[ids[0, 2]] == "red"
    with pytest.raises(VocabularyError, match="unknown word 'dog'"):
        tok.encode("a red dog")
    with pytest.raises(VocabularyError, match="at most 14"):
        tok.encode(" ".join(["red"] * 15))


def test_text_encoder_ignores_padding_and_pools_eos():
    enc = _text()
    ids, mask = enc.tokenizer(["a red circle"])
    out = enc(ids, mask)
    ids2 = ids.clone()
    ids2[~mask] = 5  # change the padding tokens
    out2 = enc(ids2, mask)
    assert torch.allclose(out["pooled"], out2["pooled"], atol=1e-5)
    assert torch.allclose(out["pooled"], out["context"][0, 4])
    assert not torch.allclose(enc.encode(["a red circle"])["pooled"], enc.encode(["a blue circle"])["pooled"])


@pytest.mark.parametrize("resolution", [16, 32])
def test_unet_shapes_and_conditioning(resolution):
    torch.manual_seed(0)
    unet = UNet(UNetConfig(resolution=resolution, **SMALL)).eval()
    for p in unet.parameters():  # zero-initialised output layers would hide the conditioning
        torch.nn.init.normal_(p, std=0.05)
    text = _text()
    x, t = torch.randn(2, 3, resolution, resolution), torch.tensor([10, 900])
    c1, c2 = text.encode(["a red circle", "a red circle"]), text.encode(["a red circle", "two blue squares"])
    out1, out2 = unet(x, t, **c1), unet(x, t, **c2)
    assert out1.shape == x.shape
    untouched = (out1[0] - out2[0]).abs().max().item()  # sample 0 does not see sample 1's caption
    changed = (out1[1] - out2[1]).abs().max().item()  # sample 1's caption changed: so does its output
    assert untouched < 1e-6 and changed > 1e-4, (untouched, changed)


def test_unet_is_batch_invariant():
    torch.manual_seed(0)
    unet, text = UNet(UNetConfig(resolution=16, **SMALL)).eval(), _text()
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999])
    prompts = ["a red circle", "three blue squares", "a cyan circle above a red square"]
    full = unet(x, t, **text.encode(prompts))
    for i in range(3):
        one = unet(x[i:i + 1], t[i:i + 1], **text.encode(prompts[i:i + 1]))
        assert torch.allclose(full[i:i + 1], one, atol=1e-5)


def test_extra_input_channels_are_keyword_conditioning():
    unet = UNet(UNetConfig(resolution=16, extra_in_channels=3, **SMALL))
    out = unet(torch.randn(1, 3, 16, 16), torch.tensor([5]), low_res=torch.randn(1, 3, 16, 16))
    assert out.shape == (1, 3, 16, 16)


def test_text_encoder_init_lets_word_order_through():
    """CLIP's init (tokens N(0, 0.02^2)): at init, swapping which colour goes with which shape moves the pooled
    output by >1e-3 in cosine. With torch's default N(0, 1) token init, positions were ~1% of the signal and the
    swap moved it by ~1e-6: the encoder started (and the shipped base32 ended) as a bag of words."""
    import torch.nn.functional as F

    from condiff.nets.text import TextEncoder, TextEncoderConfig
    from condiff.world.grammar import VOCABULARY

    captions = ["a red circle to the left of a blue square", "a blue circle to the left of a red square"]
    for seed in range(3):
        torch.manual_seed(seed)
        enc = TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY)))
        with torch.no_grad():
            pooled = F.normalize(enc.encode(captions)["pooled"], dim=-1)
        assert 1 - (pooled[0] @ pooled[1]).item() > 1e-3


@pytest.mark.parametrize("ch, groups", [(32, 8), (96, 24), (128, 32), (144, 24), (40, 10), (12, 3), (2, 1)])
def test_group_norm_divides_any_width(ch, groups):
    from condiff.nets.unet import norm

    gn = norm(ch)  # up to 32 groups of at least 4 channels, and the count divides ch (144: 32 does not)
    assert gn.num_groups == groups and ch % gn.num_groups == 0


def test_unet_builds_at_a_width_that_is_no_multiple_of_32():
    cfg = dict(SMALL, model_channels=48, head_channels=48)  # 48 + 96 = 144 channels: 32 groups do not divide it
    unet = UNet(UNetConfig(resolution=16, **cfg)).eval()
    text = _text()
    x = torch.randn(1, 3, 16, 16)
    assert unet(x, torch.tensor([5]), **text.encode(["a red circle"])).shape == x.shape


def test_causal_layers_carry_word_order_without_positions():
    """With positions zeroed, a bidirectional encoder is a bag of words: the two captions below hold the same words,
    so "blue" gets the same context in both. Causal layers (token k attends to tokens <= k) tell them apart, and token k's
    context in a fully causal encoder depends on tokens <= k alone. Fresh causal layers are the identity (zero residual branches)."""
    captions = ["a red circle to the left of a blue square", "a blue square to the left of a red circle"]
    bag = _text()
    causal = TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY), width=32, layers=1, heads=2, causal_layers=1)).eval()
    causal.load_state_dict(bag.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.allclose(causal.encode(captions)["context"], bag.encode(captions)["context"], atol=1e-6)
        for enc in (bag, causal):
            enc.pos.zero_()
        for p in causal.causal.parameters():
            p.normal_(0, 0.2)
        blue = [9, 2]  # "blue" in each caption (<bos> is token 0)
        for enc, same in ((bag, True), (causal, False)):
            out = enc.encode(captions)
            assert torch.allclose(out["context"][0, blue[0]], out["context"][1, blue[1]], atol=1e-5) == same
        # one causal layer still pools a set at <eos>; a second one sees order there too
        two = TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY), width=32, layers=1, heads=2, causal_layers=2)).eval()
        two.pos.zero_()
        for p in two.causal.parameters():
            p.normal_(0, 0.2)
        pooled_causal, pooled_two = causal.encode(captions)["pooled"], two.encode(captions)["pooled"]
        assert torch.allclose(pooled_causal[0], pooled_causal[1], atol=1e-5)
        assert (pooled_two[0] - pooled_two[1]).abs().max() > 1e-2
        # a fully causal encoder (CLIP's): token k's context is a function of tokens <= k alone
        clip_like = TextEncoder(TextEncoderConfig(vocab=list(VOCABULARY), width=32, layers=0, heads=2, causal_layers=2)).eval()
        for p in clip_like.causal.parameters():
            p.normal_(0, 0.2)
        ctx = clip_like.encode(["a red circle to the left of a blue square", "a red circle to the left of a blue triangle"])["context"]
        assert torch.allclose(ctx[0, :10], ctx[1, :10], atol=1e-5) and not torch.allclose(ctx[0, 10], ctx[1, 10], atol=1e-3)
