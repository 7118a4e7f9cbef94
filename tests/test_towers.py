"""Tower shapes, unit norm, pooling, logit_scale, and loading from local directories."""

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from vlcontrast import config as config_lib
from vlcontrast.config import ConfigError, ImageTowerConfig, TextTowerConfig
from vlcontrast.models import build_model
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_tower import (
    TextTower,
    follow_tokenizer,
    load_tokenizer,
    pool_eos,
    pool_mean,
)

BERT = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


@pytest.mark.parametrize("name", ["test_vit", "test_resnet", "test_convnext"])
def test_image_tower_outputs_unit_norm_embeddings(name):
    tower = ImageTower(ImageTowerConfig(model=name, image_size=64), embed_dim=24)
    feat, emb = tower(torch.randn(3, 3, 64, 64))
    assert emb.shape == (3, 24) and feat.shape == (3, tower.num_features)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert len(tower.mean) == 3 and len(tower.std) == 3


@pytest.mark.parametrize(
    "name, kwargs, shape",
    [
        ("test_resnet", {}, (2, 96, 2, 2)),  # the last stage, (B, C, H, W): 64 px / 32
        ("test_vit", {}, (2, 16, 64)),  # patch tokens without the class token: (64 / 16)^2
        ("vit_base_patch16_clip_224", {"embed_dim": 32, "depth": 1, "num_heads": 2}, (2, 16, 32)),
    ],
)
def test_towers_show_their_feature_maps_on_request_and_pool_as_before(name, kwargs, shape):
    """``feature_map=True`` adds the map the pooled features come from (a CNN's last stage, a
    ViT's patch tokens); the pooled features and embeddings are those of the plain call."""
    cfg = config_lib.load(
        None, ["model.kind=dual", f"image.model={name}", "image.image_size=64", "model.preset=tiny"]
    )
    cfg.image.model, cfg.image.model_kwargs = name, kwargs
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        plain, mapped = model(images=images), model(images=images, feature_map=True)
    assert "img_map" not in plain and mapped["img_map"].shape == shape
    torch.testing.assert_close(mapped["img_feat"], plain["img_feat"])
    torch.testing.assert_close(mapped["img_emb"], plain["img_emb"])
    cfg.model.kind = "image"
    image_only = build_model(cfg).eval()
    with torch.no_grad():
        out = image_only(images=images, feature_map=True)
    assert out["img_map"].shape == shape and "img_map" not in image_only(images=images)


@pytest.mark.parametrize("pooling", ["cls", "mean", "eos"])
def test_text_tower_outputs_unit_norm_embeddings(pooling):
    tower = TextTower(TextTowerConfig(config=BERT, pooling=pooling), embed_dim=24)
    ids = torch.randint(0, 64, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    feat, emb = tower(ids, mask)
    assert emb.shape == (3, 24) and feat.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_pooling_ignores_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(pool_mean(hidden, mask)[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool_eos(hidden, mask), torch.stack([hidden[0, 1], hidden[1, 3]]))


def test_text_tower_from_local_directory_keeps_the_weights(tmp_path, corpus):
    encoder = BertModel(BertConfig(**{k: v for k, v in BERT.items() if k != "model_type"}))
    encoder.save_pretrained(tmp_path / "bert")
    tower = TextTower(TextTowerConfig(model=str(tmp_path / "bert"), pretrained=True), 8)
    loaded = tower.encoder.state_dict()
    saved = {k: v for k, v in encoder.state_dict().items() if not k.startswith("pooler.")}
    assert set(loaded) == set(saved)  # the unused pooler is dropped (DDP needs every gradient)
    for name, value in saved.items():
        torch.testing.assert_close(loaded[name], value, msg=name)
    fresh = TextTower(TextTowerConfig(model=str(tmp_path / "bert"), pretrained=False), 8)
    emb_a, emb_b = (
        fresh.encoder.embeddings.word_embeddings.weight,
        encoder.embeddings.word_embeddings.weight,
    )
    assert not torch.equal(emb_a, emb_b)  # pretrained=false: same architecture, random init
    tok = load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))
    assert tok("a red circle")["input_ids"][0] == tok.cls_token_id


def test_text_config_needs_model_type():
    with pytest.raises(ConfigError, match="text.config: needs a model_type"):
        TextTower(TextTowerConfig(config={"hidden_size": 8}), 4)


def test_the_default_text_tower_is_clips_causal_transformer_with_eos_pooling():
    """No text.model and no text.config: CLIP's text transformer (causal mask, pre-LN, final
    norm), eos pooling, and a vocabulary that follows the tokenizer."""
    cfg = TextTowerConfig(config={})
    follow_tokenizer(cfg, tokenizer=list(range(300)))  # anything with a len()
    assert cfg.config["model_type"] == "clip_text_model" and cfg.config["vocab_size"] == 300
    assert cfg.config["num_hidden_layers"] == 12 and cfg.config["hidden_size"] == 512
    cfg.config.update(num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    cfg.config["num_attention_heads"] = 2
    tower = TextTower(cfg, 8).eval()
    assert type(tower.encoder).__name__ == "CLIPTextModel" and tower.pool is pool_eos
    ids = torch.randint(0, 300, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 300
    with torch.no_grad():
        before = tower.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        after = tower.encoder(input_ids=changed, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(before[:, :4], after[:, :4])  # causal: earlier tokens unmoved
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_logit_scale_init_and_clamp():
    cfg = config_lib.load(
        None, ["image.model=test_vit", "image.image_size=32", "model.embed_dim=8"]
    )
    cfg.text.config = BERT
    model = build_model(cfg)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    out = model(
        images=torch.randn(2, 3, 32, 32),
        input_ids=torch.randint(0, 64, (2, 5)),
        attention_mask=torch.ones(2, 5),
    )
    assert out["img_emb"].shape == out["txt_emb"].shape == (2, 8)
    assert out["logit_scale"].item() == pytest.approx(100.0) and "logit_bias" not in out
    assert out["img_feat"].shape == (2, model.image.num_features)
    assert out["txt_feat"].shape == (2, 32)
    image_only = model(images=torch.randn(2, 3, 32, 32))
    assert set(image_only) == {"img_feat", "img_emb", "logit_scale"}


def test_model_kwargs_the_model_does_not_take_name_the_key():
    # a ViT preset's kwargs left under a ResNet (the preset applies under the run file)
    cfg = ImageTowerConfig(model="test_resnet", pretrained=False, model_kwargs={"patch_size": 4})
    with pytest.raises(
        ConfigError, match="image.model_kwargs: 'test_resnet' takes no 'patch_size'"
    ):
        ImageTower(cfg, 16)


def test_pooler_pooling_needs_a_tower_with_a_pooler():
    cfg = TextTowerConfig(
        config={
            "model_type": "distilbert",
            "vocab_size": 64,
            "dim": 32,
            "n_layers": 1,
            "n_heads": 2,
            "hidden_dim": 64,
            "max_position_embeddings": 32,
        },
        pooling="pooler",
        context_length=16,
    )
    with pytest.raises(ConfigError, match="text.pooling: pooler, but the distilbert"):
        TextTower(cfg, 16)
