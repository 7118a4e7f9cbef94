"""Released CLIP weights in and out (Hugging Face ``CLIPModel`` layout), offline: a randomly
initialised ``CLIPModel`` saved locally imports with the same embeddings and logits as
``transformers`` computes, and an exported vlcontrast model reloads in ``transformers`` with the
same embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlcontrast import config as config_lib
from vlcontrast.models import build_model
from vlcontrast.models.hf_clip import export_hf, import_hf

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def tiny_clip_config(act: str = "quick_gelu"):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=99,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=97,
        eos_token_id=98,
        pad_token_id=0,
        hidden_act=act,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        hidden_act=act,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen)
    ids = torch.randint(1, 97, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    for row, length in enumerate((9, 6, 4)):  # eos at the end of each text, then padding
        ids[row, length - 1] = 98
        ids[row, length:] = 0
        mask[row, length:] = 0
    return images, ids, mask


def hf_outputs(hf_model, images, ids, mask):
    pixels = (images.float() / 255 - MEAN) / STD
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
    return F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1), out


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_an_imported_hf_clip_gives_the_embeddings_and_logits_transformers_computes(tmp_path, act):
    from transformers import CLIPModel

    torch.manual_seed(0)
    hf_model = CLIPModel(tiny_clip_config(act)).eval()
    with torch.no_grad():
        hf_model.logit_scale.fill_(2.7)
    hf_model.save_pretrained(tmp_path / "hf")
    model, _, cfg = import_hf(tmp_path / "hf")
    images, ids, mask = inputs()
    want_img, want_txt, out = hf_outputs(hf_model, images, ids, mask)
    with torch.no_grad():
        ours = model(images=images, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours["img_emb"], want_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["txt_emb"], want_txt, rtol=1e-5, atol=1e-5)
    logits = ours["logit_scale"] * ours["img_emb"] @ ours["txt_emb"].T
    torch.testing.assert_close(logits, out.logits_per_image, rtol=1e-5, atol=1e-5)
    assert cfg.image.model.endswith("quickgelu_224") == (act == "quick_gelu")


TEXT_OVERRIDES = [
    "text.config={model_type: clip_text_model, vocab_size: 99, hidden_size: 32, "
    "intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, "
    "max_position_embeddings: 16, bos_token_id: 97, eos_token_id: 98, pad_token_id: 0}",
    "text.context_length=16",
]


@pytest.mark.parametrize(
    "image",
    [
        [
            "image.model=vit_base_patch16_clip_quickgelu_224",
            "image.model_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4, "
            "mlp_ratio: 2.5}",
        ],
        # the presets' ViT (model.preset=b32 trains this one), GELU
        [
            "model.preset=tiny",
            "image.model_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}",
        ],
    ],
    ids=["quickgelu-b16-name", "preset"],
)
def test_an_exported_model_reloads_in_transformers_with_the_same_embeddings(tmp_path, image):
    from transformers import CLIPModel

    overrides = [*image, "image.image_size=32", *TEXT_OVERRIDES, "model.embed_dim=16"]
    cfg = config_lib.resolve(config_lib.load(None, overrides))
    torch.manual_seed(1)
    model = build_model(cfg).eval()
    export_hf(model, None, cfg, tmp_path / "out")
    hf_model = CLIPModel.from_pretrained(tmp_path / "out").eval()
    images, ids, mask = inputs(1)
    want_img, want_txt, out = hf_outputs(hf_model, images, ids, mask)
    with torch.no_grad():
        ours = model(images=images, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(want_img, ours["img_emb"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(want_txt, ours["txt_emb"], rtol=1e-5, atol=1e-5)
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()
    # and back: the round trip is exact
    again, _, _ = import_hf(tmp_path / "out")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


@pytest.mark.parametrize("image", ["test_vit", "test_resnet"])
def test_a_model_that_is_not_clip_shaped_is_refused_with_the_alternative(tmp_path, corpus, image):
    from tests.conftest import tiny_overrides

    overrides = [*tiny_overrides(corpus, tmp_path), f"image.model={image}", "image.model_kwargs={}"]
    cfg = config_lib.resolve(config_lib.load(None, overrides))
    with pytest.raises(ValueError, match="transformers has no model.*--to safetensors"):
        export_hf(build_model(cfg), None, cfg, tmp_path / "out")


def test_a_clip_vit_with_a_bert_tower_exports_as_a_vision_text_dual_encoder(tmp_path, corpus):
    """text.pooling=pooler (BERT's own pooler, which VisionTextDualEncoderModel reads): the
    exported directory gives our embeddings in transformers, with its processor."""
    from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor

    from vlcontrast.models.text_tower import load_tokenizer

    overrides = [
        "model.preset=tiny",
        "image.model_kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 4}",
        "image.image_size=32",
        "text.config={model_type: bert, hidden_size: 32, num_hidden_layers: 2, "
        "num_attention_heads: 4, intermediate_size: 64, max_position_embeddings: 32}",
        f"text.tokenizer={corpus['tokenizer']}",
        "text.pooling=pooler",
        "text.context_length=16",
        "model.embed_dim=16",
    ]
    cfg = config_lib.load(None, overrides)
    tokenizer = load_tokenizer(cfg.text)
    cfg.text.config["vocab_size"] = len(tokenizer)
    cfg = config_lib.resolve(cfg)
    torch.manual_seed(2)
    model = build_model(cfg).eval()
    assert model.text.encoder.pooler is not None  # kept, and trained, under this pooling
    export_hf(model, tokenizer, cfg, tmp_path / "out")
    hf_model = VisionTextDualEncoderModel.from_pretrained(tmp_path / "out").eval()
    processor = VisionTextDualEncoderProcessor.from_pretrained(tmp_path / "out")
    captions = ["a red circle", "a small blue square on the left"]
    batch = processor.tokenizer(captions, padding=True, return_tensors="pt")
    images, _, _ = inputs(2)
    pixels = (images.float() / 255 - MEAN) / STD
    with torch.no_grad():
        out = hf_model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=pixels,
        )
        ours_img = model(images=images)["img_emb"]
        ours_txt = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(
        F.normalize(out.image_embeds, dim=-1), ours_img, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        F.normalize(out.text_embeds, dim=-1), ours_txt["txt_emb"], rtol=1e-5, atol=1e-5
    )


def test_import_then_fine_tune_and_export_through_the_cli(tmp_path, corpus, capsys):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    from vlcontrast import cli
    from vlcontrast.config import TextTowerConfig
    from vlcontrast.models.load import load_model
    from vlcontrast.models.text_tower import load_tokenizer
    from vlcontrast.train import checkpoint

    tokenizer = load_tokenizer(TextTowerConfig(tokenizer=corpus["tokenizer"]))
    hf_cfg = tiny_clip_config()
    hf_cfg.text_config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is not None:  # this word-level tokenizer has no eos
            setattr(hf_cfg.text_config, name, getattr(tokenizer, name))
    torch.manual_seed(0)
    CLIPModel(hf_cfg).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")

    ckpt = tmp_path / "imported"
    assert cli.main(["import", "hf", str(tmp_path / "hf"), "--out", str(ckpt)]) == 0
    model, tok, cfg = load_model(ckpt)
    reference, _, _ = import_hf(tmp_path / "hf")
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name

    run = tmp_path / "run"
    args = [
        "train",
        str(ckpt / "config.json"),
        f"model.init_from={ckpt}",
        f"data.train_shards={corpus['train_shards']}",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.shuffle_buffer=16",
        "text.context_length=16",
        "optim.lr=1e-12",
        "optim.warmup_steps=1",
        "train.steps=1",
        "train.save_every=1",
        "train.progress=false",
        "train.tensorboard=false",
        f"train.output_dir={run}",
    ]
    assert cli.main(args) == 0
    tuned = load_file(checkpoint.latest(run / "checkpoints") / "model.safetensors")
    for name, value in reference.state_dict().items():  # one step at lr 1e-12: the import
        torch.testing.assert_close(tuned[name], value, rtol=0, atol=1e-6, msg=name)
    hf_start = [
        *args[:2],
        f"model.init_from={tmp_path / 'hf'}",
        *args[3:-1],
        f"train.output_dir={tmp_path / 'run2'}",
    ]
    assert cli.main(hf_start) == 0  # straight from the Hugging Face directory

    out = tmp_path / "exported"
    assert cli.main(["export", str(ckpt), "--to", "hf", str(out)]) == 0
    assert CLIPModel.from_pretrained(out).config.projection_dim == 16
    assert (out / "tokenizer.json").is_file() or (out / "vocab.json").is_file()
    flat = tmp_path / "weights.safetensors"
    assert cli.main(["export", str(ckpt), "--to", "safetensors", str(flat)]) == 0
    assert set(load_file(flat)) == set(model.state_dict())
    bad = [*args[:2], f"model.init_from={tmp_path}", *args[3:-1], f"train.output_dir={tmp_path}/x"]
    assert cli.main(bad) == 2
    assert "model.init_from" in capsys.readouterr().err


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_a_random_openclip_checkpoint_imports_with_openclips_embeddings(tmp_path, quick_gelu):
    open_clip = pytest.importorskip("open_clip")
    from tests.conftest import import_openclip_model

    model_cfg = {
        "embed_dim": 16,
        "quick_gelu": quick_gelu,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "patch_size": 8,
            "head_width": 8,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2},
    }
    torch.manual_seed(0)
    reference = open_clip.CLIP(**model_cfg).eval()
    model, _, _ = import_openclip_model(reference, model_cfg, tmp_path)
    images, ids, mask = inputs(2)
    pad = torch.zeros(ids.shape[0], 16 - ids.shape[1], dtype=ids.dtype)
    ids, mask = torch.cat([ids, pad], 1), torch.cat([mask, pad], 1)  # OpenCLIP: full context
    pixels = (images.float() / 255 - MEAN) / STD
    with torch.no_grad():
        want_img = reference.encode_image(pixels, normalize=True)
        want_txt = reference.encode_text(ids, normalize=True)  # eos (98) is the highest id
        ours = model(images=images, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(ours["img_emb"], want_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["txt_emb"], want_txt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["logit_scale"], reference.logit_scale.exp())


def test_the_openclip_import_command_needs_its_config(tmp_path, capsys):
    from vlcontrast import cli

    args = ["import", "openclip", str(tmp_path / "x.bin"), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    assert "--config: an OpenCLIP import needs the model config JSON" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_import_errors_are_one_line_and_run_nothing(tmp_path, capsys):
    """A pickled pytorch_model.bin that would run code, and a config.json far wider than its
    weights: each one message naming the file, rc 2, no traceback, nothing run or allocated."""
    import json
    import pickle

    from transformers import CLIPModel

    from vlcontrast import cli

    hostile = tmp_path / "hostile"
    tiny_clip_config().save_pretrained(hostile)
    marker = tmp_path / "pwned"
    with open(hostile / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"weights": _Payload(str(marker))}, handle)
    assert cli.main(["import", "hf", str(hostile), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "pytorch_model.bin" in err, err
    assert err.strip().count("\n") == 0 and not marker.exists()

    wide = tmp_path / "wide"
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(wide)
    values = json.loads((wide / "config.json").read_text())
    values["vision_config"].update(hidden_size=2**20 * 64, intermediate_size=2**30)
    (wide / "config.json").write_text(json.dumps(values))
    capsys.readouterr()  # save_pretrained's progress bar
    assert cli.main(["import", "hf", str(wide), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "do not match its config.json" in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_imported_clip_sees_the_pixels_of_its_own_processor(tmp_path):
    """Non-square images through evaluation's decode and transform equal transformers'
    CLIPImageProcessor (shortest side resized, then centre-cropped); a checkpoint trained here
    keeps its largest-square crop."""
    import io
    import random

    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPModel

    from vlcontrast.data.image import decode_image, normalize_uint8
    from vlcontrast.embed import eval_transform

    torch.manual_seed(0)
    CLIPModel(tiny_clip_config()).save_pretrained(tmp_path / "hf")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)
    processor.save_pretrained(tmp_path / "hf")
    _, _, cfg = import_hf(tmp_path / "hf")
    assert cfg.image.eval_resize == "shortest"
    transform = eval_transform(cfg)
    rng = np.random.default_rng(0)
    for height, width in [(36, 40), (40, 36), (97, 50), (32, 32), (20, 70)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        png = io.BytesIO()
        image.save(png, "PNG")
        pixels = decode_image(png.getvalue(), transform, random.Random(0))
        ours = normalize_uint8(pixels[None], cfg.image.mean, cfg.image.std)[0]
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    trained_here = config_lib.resolve(config_lib.load(None, []))
    assert not eval_transform(trained_here).shortest_side
