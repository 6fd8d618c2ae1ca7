"""Make the reward fixtures: tiny random-weight checkpoints in each original's own format and key
names, and the scores the ORIGINAL code gives them. Run once, in a separate environment that has
the original packages (never in the project's own venv, which must not depend on them):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 \
        transformers==4.46.3 torchmetrics==1.6.1 ftfy regex timm fairscale
    pip download --no-deps hpsv2==1.2.0 image-reward==1.5 -d /tmp/refsrc   # then unzip the wheels:
    (cd /tmp/refsrc && mkdir -p hps ir && unzip -oq hpsv2-1.2.0-*.whl -d hps && unzip -oq image_reward-1.5-*.whl -d ir)
    /tmp/refenv/bin/python tests/rewards/make_fixtures.py /tmp/refsrc

What computes each reference score:
- hpsv2: HPSv2 1.2.0's own bundled open_clip (``hpsv2/src/open_clip``): ``create_model_and_transforms(...,
  light_augmentation=True)`` as ``hpsv2.img_score`` calls it (so its ``preprocess_val``: ToTensor,
  ResizeMaxSize, Normalize), ``load_state_dict(ckpt["state_dict"])``, its tokenizer, the diagonal of
  image_features @ text_features.T; x100. The tiny model is a registered ViT config, the checkpoint a
  ``{"state_dict": ...}`` .pt in fp16 like HPS_v2_compressed.pt.
- pickscore: the PickScore_v1 model card's code: ``AutoProcessor`` (slow CLIP processor) + ``CLIPModel``,
  logit_scale.exp() * cosine.
- clipscore: ``torchmetrics.multimodal.CLIPScore(model_name_or_path=folder)`` on one image at a time.
- imagereward: ImageReward 1.5's own ``ImageReward.score`` (its BLIP ViT, BLIP's ``med.BertModel``,
  its torchvision transform, max_length 35, the published mean/std) around a tiny BLIP; its
  ``ImageReward.pt`` a flat state dict as the original, in half precision.
- aesthetic: improved-aesthetic-predictor's ``simple_inference.py``: the OpenAI ``clip`` package's
  torchvision transform (Resize(224, bicubic), CenterCrop, ToTensor, Normalize), the CLIP image
  embedding, numpy L2 normalization, the ``MLP`` (Linear/Dropout stack) loaded from the .pth. The CLIP
  here is the tiny transformers CLIPModel (the hub's openai/clip-vit-large-patch14 format).

The CLIP tokenizer of the tiny HPS model is the real CLIP BPE cut down to the merges that can fire
on the test prompts (BPE only ever builds substrings of a word, so the cut keeps every merge that
matters, in rank order, with the original ids): tokenization equals open_clip's on these prompts,
which this script asserts.
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent / "fixtures"
PROMPTS = ["a red cube on a blue sphere", "two dogs playing in the snow",
           "an astronaut riding a horse, photorealistic", "a bowl of fruit", "a tall lighthouse at dusk"]
# Odd sizes on purpose: crop margins where floor and round differ (303x200: 115 px, 37x103: 399 px),
# a long side whose int() and round() differ (37x103 -> 224x623.57), up- and down-scaling, an odd
# padding (251x250 pads 1 px), a no-op (224x224).
SIZES = [(53, 37), (303, 200), (224, 224), (251, 250), (37, 103)]
WORDS = sorted({w for p in PROMPTS for w in p.replace(",", " ").split()})


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    out = []
    for w, h in SIZES:
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x / w * 255, y / h * 255, (x + y) % 64 * 4], -1).astype(np.uint8)
        im = Image.fromarray(base)
        d = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = rng.integers(0, w), rng.integers(0, h)
            d.ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        out.append(im)
    return out


def save_images(folder: Path) -> list[Image.Image]:
    ims = images()
    for i, im in enumerate(ims):
        im.save(folder / f"image{i}.png")
    return [Image.open(folder / f"image{i}.png").convert("RGB") for i in range(len(ims))]


# ---------------------------------------------------------------- tokenizers
def small_clip_tokenizer_files(folder: Path) -> int:
    """A small CLIP BPE (whole test words + characters) for the tiny transformers CLIP."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list(",.!'")
    tokens = chars + [c + "</w>" for c in chars]
    merges = []
    for word in sorted(WORDS, key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        acc = pieces[0]
        for nxt in pieces[1:]:
            merges.append(f"{acc} {nxt}")
            acc += nxt
            tokens.append(acc)
    vocab = {}
    for t in tokens + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(t, len(vocab))
    _write_tokenizer(folder, vocab, list(dict.fromkeys(merges)))
    return len(vocab)


def subset_clip_bpe_files(folder: Path) -> None:
    """open_clip's BPE restricted to the merges that can fire on the test prompts."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    words = {w for p in PROMPTS for w in tok.pat.findall(p.lower())}

    def fits(token: str) -> bool:
        end = token.endswith("</w>")
        core = token[:-4] if end else token
        return any((w.endswith(core) if end else core in w) for w in words)

    vocab = {t: i for t, i in tok.encoder.items() if fits(t)}
    vocab.update({"<|startoftext|>": tok.sot_token_id, "<|endoftext|>": tok.eot_token_id})  # open_clip's names differ
    merges = [f"{a} {b}" for (a, b), _ in sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1]) if fits(a + b)]
    _write_tokenizer(folder, vocab, merges)


def _write_tokenizer(folder: Path, vocab: dict, merges: list[str]) -> None:
    """A tokenizer.json built as transformers' CLIPTokenizer builds its backend (the file every
    transformers version loads as is), with the special tokens at their vocab ids."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tok = Tokenizer(BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges], continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                                   r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.post_processor = processors.RobertaProcessing(("<|endoftext|>", vocab["<|endoftext|>"]),
                                                      ("<|startoftext|>", vocab["<|startoftext|>"]),
                                                      trim_offsets=False, add_prefix_space=False)
    tok.save(str(folder / "tokenizer.json"))  # warns that the cut vocabulary has holes in its ids: intended
    (folder / "vocab.json").write_text(json.dumps(vocab))  # for the slow tokenizer of the reference code
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "model_max_length": 77}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))


# ---------------------------------------------------------------- HPSv2 (open_clip)
HPS_CFG = {"embed_dim": 8,
           "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 14},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2}}


def make_hps(folder: Path, refsrc: Path, pil_images) -> dict:
    import open_clip

    sys.path.insert(0, str(refsrc / "hps"))
    bpe = refsrc / "hps/hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz"
    if not bpe.exists():  # the hpsv2 wheel omits its BPE file; it is open_clip's, byte for byte
        shutil.copy(Path(open_clip.__file__).parent / bpe.name, bpe)
    from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer
    from hpsv2.src.open_clip.factory import add_model_config

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ViT-tiny-hps.json").write_text(json.dumps(HPS_CFG))
        add_model_config(tmp)
    torch.manual_seed(1)
    model, _, preprocess_val = create_model_and_transforms(
        "ViT-tiny-hps", None, precision="fp32", device="cpu", jit=False, force_quick_gelu=False,
        force_custom_text=False, force_patch_dropout=False, force_image_size=None, pretrained_image=False,
        image_mean=None, image_std=None, light_augmentation=True, aug_cfg={}, output_dict=True,
        with_score_predictor=False, with_region_predictor=False)
    tokenizer = get_tokenizer("ViT-tiny-hps")
    state = model.state_dict()
    with torch.no_grad():  # random weights of a useful scale; unused token rows zero (the file gzips small)
        g = torch.Generator().manual_seed(2)
        for k, v in state.items():
            if v.is_floating_point() and k != "attn_mask":
                v.copy_(torch.randn(v.shape, generator=g) * (0.02 if "embedding" in k else 0.2))
                if "ln" in k and k.endswith("weight"):
                    v.add_(1.0)
        used = torch.unique(tokenizer(PROMPTS))
        keep = torch.zeros(state["token_embedding.weight"].shape[0], dtype=torch.bool)
        keep[used] = True
        state["token_embedding.weight"][~keep] = 0
        state["logit_scale"].fill_(np.log(1 / 0.07))
    # HPS_v2_compressed.pt is a half-precision {"state_dict": ...}; load it back the way img_score does.
    ckpt = {"state_dict": {k: v.half() for k, v in state.items()}}
    raw = folder / "HPS_v2_compressed.pt"
    torch.save(ckpt, raw)
    model.load_state_dict({k: v.float() for k, v in torch.load(raw, map_location="cpu")["state_dict"].items()},
                          strict=False)
    model.eval()
    with open(folder / "HPS_v2_compressed.pt.gz", "wb") as out, \
            gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=0) as f:  # same bytes every run
        f.write(raw.read_bytes())
    raw.unlink()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": HPS_CFG}, indent=1))
    subset_clip_bpe_files(folder)
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(folder)
    for p, ids in zip(PROMPTS, tokenizer(PROMPTS)):
        n = int((ids != 0).sum())
        assert hf(p)["input_ids"] == ids[:n].tolist(), (p, hf(p)["input_ids"], ids[:n].tolist())

    scores = []
    with torch.no_grad():
        for im, p in zip(pil_images, PROMPTS):
            out = model(preprocess_val(im).unsqueeze(0), tokenizer([p]))
            scores.append(100 * float(torch.diagonal(out["image_features"] @ out["text_features"].T)[0]))
    ids = [row[:int((row != 0).sum())].tolist() for row in tokenizer(PROMPTS)]
    return {"hpsv2": scores, "token_ids": {"hps-tiny": ids}}


# ---------------------------------------------------------------- transformers CLIP: PickScore, CLIPScore, aesthetic
def make_clip(folder: Path, pil_images) -> dict:
    from transformers import AutoProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel

    vocab = small_clip_tokenizer_files(folder)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=224, patch_size=16),
        projection_dim=8)
    torch.manual_seed(3)
    model = CLIPModel(cfg)
    with torch.no_grad():
        for k, v in model.named_parameters():
            if "layer_norm" not in k and "layrnorm" not in k and "layernorm" not in k:
                v.copy_(torch.randn_like(v) * 0.2)
        model.logit_scale.fill_(np.log(57.3))  # not 100 (PickScore_v1's), so a hard-coded 100 would show
    model.save_pretrained(folder, safe_serialization=True)
    model = CLIPModel.from_pretrained(folder).eval()

    out = {}
    # PickScore (model card code)
    processor = AutoProcessor.from_pretrained(folder, use_fast=False)
    with torch.no_grad():
        image_inputs = processor(images=pil_images, padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_inputs = processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embs = model.get_image_features(**image_inputs)
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = model.get_text_features(**text_inputs)
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        out["pickscore"] = (model.logit_scale.exp() * (text_embs * image_embs).sum(-1)).tolist()
    out["token_ids"] = {"clip-tiny": processor.tokenizer(PROMPTS)["input_ids"]}

    # CLIPScore (torchmetrics), one image at a time (the metric averages over a batch)
    from torchmetrics.multimodal import CLIPScore
    from torchvision.transforms.functional import pil_to_tensor

    metric = CLIPScore(model_name_or_path=str(folder))
    out["clipscore"] = [float(metric(pil_to_tensor(im), p)) for im, p in zip(pil_images, PROMPTS)]

    # LAION aesthetic predictor (simple_inference.py), with a tiny MLP of the original's layer layout
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 12),
                              torch.nn.Dropout(0.2), torch.nn.Linear(12, 8), torch.nn.Dropout(0.1),
                              torch.nn.Linear(8, 4), torch.nn.Linear(4, 1))
    holder = torch.nn.Module()
    holder.layers = mlp
    torch.manual_seed(4)
    with torch.no_grad():
        for p in holder.parameters():
            p.copy_(torch.randn_like(p))
    torch.save(holder.state_dict(), folder / "sac+logos+ava1-l14-linearMSE.pth")
    holder.load_state_dict(torch.load(folder / "sac+logos+ava1-l14-linearMSE.pth"))
    holder.eval()
    preprocess = Compose([Resize(224, interpolation=InterpolationMode.BICUBIC), CenterCrop(224),
                          lambda im: im.convert("RGB"), ToTensor(),
                          Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    scores = []
    with torch.no_grad():
        for im in pil_images:
            f = model.get_image_features(pixel_values=preprocess(im).unsqueeze(0)).numpy()
            l2 = np.atleast_1d(np.linalg.norm(f, 2, -1))
            l2[l2 == 0] = 1
            emb = f / np.expand_dims(l2, -1)
            scores.append(float(holder.layers(torch.from_numpy(emb).float())[0, 0]))
    out["aesthetic"] = scores
    return out


# ---------------------------------------------------------------- ImageReward (BLIP)
IMAGEREWARD_MED = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
                   "hidden_dropout_prob": 0.1, "hidden_size": 16, "initializer_range": 0.02, "intermediate_size": 32,
                   "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert",
                   "num_attention_heads": 2, "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2,
                   "encoder_width": 64, "add_cross_attention": True}


class TinyMLP(torch.nn.Module):
    """ImageReward's ``MLP`` with small widths: the same ``layers`` Sequential and forward."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(16, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 12), torch.nn.Dropout(0.2),
            torch.nn.Linear(12, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 4), torch.nn.Linear(4, 1))

    def forward(self, input):
        return self.layers(input)


def make_imagereward(folder: Path, refsrc: Path, pil_images) -> dict:
    """ImageReward's own classes (BLIP ViT, BLIP's med BertModel, ``ImageReward.score``) around a tiny
    BLIP: ViT width 64 (one 64-dim head, as BLIP's ViT-B/L), BERT width 16, a tiny MLP of the original's
    layer layout; the BERT vocabulary is cut to the test words, [DEC] and [ENC] added as BLIP does."""
    import types

    for name, sub in (("ImageReward", "ImageReward"), ("ImageReward.models", "ImageReward/models")):
        module = types.ModuleType(name)  # skip the package __init__s (they import OpenAI's clip)
        module.__path__ = [str(refsrc / "ir" / sub)]
        sys.modules[name] = module
    from transformers import BertTokenizer, BertTokenizerFast

    from ImageReward.ImageReward import ImageReward, _transform
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + WORDS + letters
                               + ["##" + c for c in letters]))  # no duplicates ("a" is a word and a letter)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer(str(folder / "vocab.txt"))
    tok.add_special_tokens({"bos_token": "[DEC]"})  # blip.init_tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.save_pretrained(folder)
    BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)  # tokenizer.json as well

    med = dict(IMAGEREWARD_MED, vocab_size=len(tok))
    (folder / "med_config.json").write_text(json.dumps(med, indent=1))
    torch.manual_seed(5)
    blip = torch.nn.Module()
    blip.visual_encoder = VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=1,
                                            mlp_ratio=1.0)
    blip.tokenizer = tok
    blip.text_encoder = BertModel(config=BertConfig.from_json_file(str(folder / "med_config.json")),
                                  add_pooling_layer=False)
    blip.vision_proj, blip.text_proj = torch.nn.Linear(64, 8), torch.nn.Linear(16, 8)  # as BLIP_Pretrain
    model = ImageReward.__new__(ImageReward)  # its __init__ builds the full-size BLIP
    torch.nn.Module.__init__(model)
    model.device, model.blip, model.preprocess = "cpu", blip, _transform(224)
    model.mlp = TinyMLP()
    model.mean, model.std = 0.16717362830052426, 1.0333394966054072
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                scale = 1.0 if k.startswith("mlp.") else 0.2  # a wide spread of rewards
                v.copy_(torch.randn_like(v) * scale + (1.0 if ("norm" in k.lower() and k.endswith("weight")) else 0.0))
    # ImageReward.pt is a flat state dict; stored in half precision to keep the fixture small.
    torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "ImageReward.pt")
    model.load_state_dict(torch.load(folder / "ImageReward.pt", map_location="cpu"), strict=False)  # as load()
    model.eval()
    with torch.no_grad():
        scores = [model.score(p, im) for im, p in zip(pil_images, PROMPTS)]
    ids = [tok(p, padding="max_length", truncation=True, max_length=35)["input_ids"] for p in PROMPTS]
    return {"imagereward": scores, "token_ids": {"imagereward-tiny": ids}}


def main(refsrc: str) -> None:
    refsrc = Path(refsrc)
    for sub in ("images", "clip-tiny", "hps-tiny", "imagereward-tiny"):
        shutil.rmtree(HERE / sub, ignore_errors=True)
        (HERE / sub).mkdir(parents=True)
    pil_images = save_images(HERE / "images")
    ref = {"prompts": PROMPTS, "images": [f"image{i}.png" for i in range(len(SIZES))], "scores": {}}
    for made in (make_clip(HERE / "clip-tiny", pil_images), make_hps(HERE / "hps-tiny", refsrc, pil_images),
                 make_imagereward(HERE / "imagereward-tiny", refsrc, pil_images)):
        ref.setdefault("token_ids", {}).update(made.pop("token_ids"))
        ref["scores"].update(made)
    import open_clip
    import torchmetrics
    import torchvision
    import transformers

    ref["made_with"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                        "transformers": transformers.__version__, "open_clip": open_clip.__version__,
                        "torchmetrics": torchmetrics.__version__, "hpsv2": "1.2.0 (bundled open_clip)",
                        "image-reward": "1.5"}
    (HERE / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(json.dumps(ref["scores"], indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/refsrc")
