"""Every timm family, the way timm tests its registry: one model per family (its smallest variant by parameter
count), tiny input; the split forward equals timm's whole forward, and one DeInfoReg local-loss step trains every
parameter. Families the adapter refuses are listed with the reason it gives, and the two tables together cover
every model module timm registers, so a new timm family fails here until someone decides which table it joins.

Default run: a fast subset (small models, 32 px). `-m slow` runs the rest (some at the larger input they need).
"""

from __future__ import annotations

import pytest
import timm
import torch

from zoo.adapters import timm as timm_adapter

torch.set_num_threads(1)

# timm model module (its family) → (smallest variant by parameter count, smallest input it converts at)
FAMILIES = {
    "beit": ("beit_base_patch16_224", 32),
    "byoanet": ("halonet_h1", 256),  # halo attention needs the full 256 px grid
    "byobnet": ("test_byobnet", 32),
    "coat": ("coat_lite_tiny", 32),  # the Lite models: coat_tiny & co. are refused (parallel blocks), see PARTIAL
    "convmixer": ("convmixer_768_32", 32),
    "convnext": ("test_convnext", 32),
    "cpubone": ("cpubone_nano", 32),
    "csatv2": ("csatv2", 64),
    "cspnet": ("cs3darknet_focus_s", 32),
    "cspnext": ("cspnext_tiny", 32),
    "davit": ("davit_tiny", 32),
    "deit": ("deit_tiny_patch16_224", 32),
    "densenet": ("densenet121", 32),
    "dla": ("dla46x_c", 32),
    "dpn": ("dpn48b", 32),
    "edgenext": ("edgenext_xx_small", 32),
    "efficientformer": ("efficientformer_l1", 224),  # its last stage's attention is sized for the 7x7 grid
    "efficientformer_v2": ("efficientformerv2_s0", 32),
    "efficientnet": ("test_efficientnet", 32),
    "efficientvit_mit": ("efficientvit_b0", 32),
    "efficientvit_msra": ("efficientvit_m0", 32),
    "fasternet": ("fasternet_t0", 32),
    "fastvit": ("fastvit_t8", 32),
    "focalnet": ("focalnet_tiny_srf", 32),
    "gcvit": ("gcvit_xxtiny", 32),
    "ghostnet": ("ghostnet_050", 32),
    "hardcorenas": ("hardcorenas_b", 32),
    "hgnet": ("hgnetv2_b0", 32),
    "hiera": ("hiera_tiny_224", 32),
    "hieradet_sam2": ("sam2_hiera_tiny", 32),
    "iformer": ("iformer_t", 32),
    "inception_next": ("inception_next_atto", 32),
    "inception_resnet_v2": ("inception_resnet_v2", 128),  # unpadded stem convs need more than 64 px
    "inception_v3": ("inception_v3", 128),
    "inception_v4": ("inception_v4", 128),
    "lcnetv2": ("lcnetv2_small", 32),
    "levit": ("levit_128s", 32),
    "lowformer": ("lowformer_b0", 32),
    "mambaout": ("test_mambaout", 32),
    "maxxvit": ("test_coatnet", 32),
    "metaformer": ("poolformerv2_s12", 32),
    "mlp_mixer": ("gmlp_ti16_224", 32),
    "mobilenetv3": ("lcnet_035", 32),
    "mobilevit": ("mobilevit_xxs", 32),
    "naflexvit": ("naflexvit_base_patch16_parfac_gap", 32),
    "nextvit": ("nextvit_small", 32),
    "nfnet": ("test_nfnet", 32),
    "pit": ("pit_ti_224", 32),
    "pvt_v2": ("pvt_v2_b0", 32),
    "rdnet": ("rdnet_tiny", 32),
    "regnet": ("regnetx_002", 32),
    "repghost": ("repghostnet_050", 32),
    "repvit": ("repvit_m1", 32),
    "res2net": ("res2next50", 32),
    "resnest": ("resnest14d", 32),
    "resnet": ("test_resnet", 32),
    "resnetv2": ("resnetv2_18", 32),
    "rexnet": ("rexnet_100", 32),
    "senet": ("legacy_seresnet18", 32),
    "sequencer": ("sequencer2d_s", 32),
    "shvit": ("shvit_s1", 32),
    "sknet": ("skresnet18", 32),
    "starnet": ("starnet_s050", 32),
    "swiftformer": ("swiftformer_xs", 32),
    "swin_transformer": ("swin_tiny_patch4_window7_224", 32),
    "swin_transformer_v2": ("swinv2_tiny_window8_256", 32),
    "swin_transformer_v2_cr": ("swinv2_cr_tiny_224", 32),
    "tiny_vit": ("tiny_vit_5m_224", 32),
    "tresnet": ("tresnet_m", 32),
    "vgg": ("vgg11", 32),
    "vision_transformer": ("test_vit", 32),
    "vision_transformer_hybrid": ("vit_tiny_r_s16_p8_224", 32),
    "vision_transformer_relpos": ("test_vit_relpos", 32),
    "vision_transformer_sam": ("samvit_base_patch16_224", 32),
    "vitamin": ("vitamin_small_224", 32),
    "vovnet": ("ese_vovnet19b_slim_dw", 32),
    "xception": ("legacy_xception", 32),
    "xception_aligned": ("xception41p", 32),
    "xcit": ("xcit_nano_12_p8_224", 32),
}
# families refused as a whole: (smallest variant, input, the reason the adapter gives)
REFUSED = {
    "cait": ("cait_xxs24_224", 32, "module 'norm' does not read the previous module's output"),  # class attention
    "convit": ("convit_tiny", 32, "module 'blocks.10' does not read"),  # class token inserted after block 9
    "crossvit": ("crossvit_tiny_240", 240, "module .blocks.0. reads 2 tensors at once"),  # two branches
    "deepseek_vit": ("deepseek_vit_412m", 224, "module .encoder.blocks.0. does not read"),
    "efficientvim": ("efficientvim_m1", 32, "module 'stages.1' does not read"),
    "eva": ("vit_tiny_patch16_dinov3_qkvb", 32, "does not run `blocks` then `norm`"),  # rotary embedding input
    "gemma4_vit": ("gemma4_vit_167m_enc", 96, "module 'blocks.0' takes more than one tensor input"),
    "hrnet": ("hrnet_w18_small", 64, "reads 2 tensors at once \\(parallel branches"),
    "mobilenetv5": ("mobilenetv5_base", 32, "module 'msfa' reads 2 tensors at once"),
    "mvitv2": ("mvitv2_tiny", 32, "are not on the chain"),  # blocks also pass their token grid
    "nasnet": ("nasnetalarge", 32, "does not read the previous module's output"),  # cells read two inputs
    "nest": ("nest_tiny", 32, "do not reproduce the original forward pass"),
    "pnasnet": ("pnasnet5large", 32, "does not read the previous module's output"),
    "qwen3_vit": ("qwen3_vit_88m", 32, "module .encoder.blocks.0. does not read"),
    "selecsls": ("selecsls42", 32, "module 'features.1' reads 2 tensors at once"),
    "tnt": ("tnt_s_legacy_patch16_224", 32, "module 'blocks.0' does not read"),  # pixel and patch streams
    "twins": ("twins_svt_small", 32, "module 'norm' does not read"),
    "visformer": ("visformer_tiny", 32, "module 'pos_drop' runs more than once"),
    "volo": ("volo_d1_224", 32, "module 'pos_drop' does not read"),
}
# refused variants of families that convert (their representative above converts)
PARTIAL = {
    "coat": ("coat_tiny", 64, "parallel blocks read all four stages at once"),
}
# the default run: small models that convert at 32 px in well under a second each, old and newly cut families
FAST = (
    "hrnet",
    "byobnet", "coat", "convnext", "cpubone", "cspnext", "dla", "edgenext", "efficientnet", "efficientvit_mit",
    "efficientvit_msra", "fasternet", "hgnet", "iformer", "lcnetv2", "levit", "mambaout", "maxxvit", "mobilenetv3",
    "mobilevit", "nfnet", "pit", "pvt_v2", "regnet", "repghost", "resnet", "starnet", "vision_transformer",
    "vision_transformer_relpos", "vovnet", "xcit",
)  # fmt: skip


def _params(names) -> list:
    return [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in sorted(names)]


def _family(name: str) -> str:
    return timm_adapter._module_of(name)


def test_tables_cover_every_timm_family() -> None:
    families = {_family(n) for n in timm.list_models()}
    assert families == set(FAMILIES) | set(REFUSED), sorted(families ^ (set(FAMILIES) | set(REFUSED)))
    assert not set(FAMILIES) & set(REFUSED) and set(PARTIAL) <= set(FAMILIES)
    assert set(FAST) <= set(FAMILIES) | set(REFUSED)
    for fam, (name, *_) in {**FAMILIES, **REFUSED, **PARTIAL}.items():
        assert _family(name) == fam, name
    assert set(timm_adapter.FAMILIES) == set(FAMILIES)  # list_supported() lists exactly the families tested here


@pytest.mark.parametrize("family", _params(FAMILIES))
def test_family_split_equals_whole_and_trains(family: str) -> None:
    name, size = FAMILIES[family]
    torch.manual_seed(0)
    model = timm_adapter.create(name, method="bp", num_classes=5, img_size=size).eval()
    torch.manual_seed(0)  # same seed, same init: the stacked blocks must compute what timm computes
    try:
        ref = timm.create_model(name, pretrained=False, num_classes=5, img_size=size)
    except TypeError:  # CNNs take any input size and no img_size argument
        torch.manual_seed(0)
        ref = timm.create_model(name, pretrained=False, num_classes=5)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(x) - ref.eval()(x)).abs().max() <= 1e-4
    assert model.num_blocks >= 2

    torch.manual_seed(0)
    model = timm_adapter.create(name, method="deinforeg", num_classes=5, img_size=size).train()
    before = [[p.detach().clone() for p in b.body.parameters()] for b in model.blocks]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = model.local_losses(x, torch.tensor([0, 4]))
    assert len(losses) == model.num_blocks and all(torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    untrained = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not untrained, untrained[:5]
    opt.step()
    for k, (old, block) in enumerate(zip(before, model.blocks)):  # each block's own loss moved its own body
        assert any(not torch.equal(o, p) for o, p in zip(old, block.body.parameters())), k


@pytest.mark.parametrize("family", [*_params(REFUSED), *(f"{f}:partial" for f in sorted(PARTIAL))])
def test_refused_families_say_why(family: str) -> None:
    fam, _, partial = family.partition(":")
    name, size, reason = (PARTIAL if partial else REFUSED)[fam]
    with pytest.raises(ValueError, match=f"cannot be cut into blocks: .*{reason}"):
        timm_adapter.create(name, num_classes=5, img_size=size)
