"""The built-in rewards: where each one's weights come from and how they are assembled.

Defaults are the published weights on the Hugging Face hub (downloaded on first use); every factory
also takes a local file or folder, so nothing needs the network once the files are on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StablenoiseError
from .clip import AestheticHead, ClipReward, clipscore_head, hps_head, pickscore_head
from .preprocess import CLIP_MEAN, CLIP_STD, Preprocess
from .registry import register
from .views import ViewsReward
from ..loading import from_pretrained
from .weights import read_state_dict, require_keys

CLIP_L14 = "openai/clip-vit-large-patch14"
LAION_H14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # PickScore's processor, HPSv2's tokenizer
PICKSCORE = "yuvalkirstain/PickScore_v1"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"hpsv2": "HPS_v2_compressed.pt", "hpsv2.1": "HPS_v2.1_compressed.pt"}
IMAGEREWARD_REPO = "THUDM/ImageReward"
BERT = "bert-base-uncased"  # BLIP's tokenizer
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{AESTHETIC_FILE}"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def _is_dir(source) -> bool:
    return source is not None and Path(source).is_dir()


def _hub_file(repo: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, filename)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StablenoiseError(f"could not download {filename} from {repo}: {msg} "
                               f"(download it yourself and pass its path)") from e


def _processor_config(source: str) -> dict:
    """preprocessor_config.json of a folder or hub repo; {} when there is none (CLIP's defaults apply)."""
    try:
        path = Path(source) / "preprocessor_config.json" if _is_dir(source) else Path(
            _hub_file(source, "preprocessor_config.json"))
        return json.loads(path.read_text()) if path.is_file() else {}
    except StablenoiseError:
        return {}


def _size(value, default: int) -> int:
    if isinstance(value, dict):
        return int(value.get("shortest_edge") or value.get("height") or default)
    return int(value or default)


def hf_preprocess(source: str, image_size: int) -> Preprocess:
    """transformers' CLIPImageProcessor as configured in ``source``: short side to ``size``, crop at floor."""
    cfg = _processor_config(source)
    sizes = (_size(cfg.get("size"), image_size), _size(cfg.get("crop_size"), image_size))
    if cfg.get("do_center_crop", True) is False or sizes != (image_size, image_size):
        raise StablenoiseError(f"{source}: unsupported image processor settings (resize {sizes[0]}, crop {sizes[1]}; "
                               f"expected both {image_size})")
    return Preprocess(image_size, "crop", "floor", tuple(cfg.get("image_mean", CLIP_MEAN)),
                      tuple(cfg.get("image_std", CLIP_STD)))


def _place(model, device, dtype):
    return model.to(device=device, dtype=dtype or torch.float32).eval()


def clip_model(source: str, device, dtype):
    from transformers import CLIPModel

    model = from_pretrained(CLIPModel, source, f"a CLIP model from {source!r}")
    return _place(model, device, dtype)


def clip_tokenizer(source: str):
    from transformers import AutoTokenizer

    return from_pretrained(AutoTokenizer, source, f"a CLIP tokenizer from {source!r}")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def clipscore(source, device, dtype):
    source = source or CLIP_L14
    model = clip_model(source, device, dtype)
    return ClipReward("clipscore", model, clip_tokenizer(source),
                      hf_preprocess(source, model.config.vision_config.image_size), clipscore_head)


def clipscore_views(source, device, dtype):
    return ViewsReward("clipscore-views", clipscore(source, device, dtype))


def pickscore(source, device, dtype):
    source = source or PICKSCORE
    model = clip_model(source, device, dtype)
    # PickScore_v1 holds the model only; its processor is LAION's ViT-H-14 one.
    processor = source if _is_dir(source) and has_tokenizer(Path(source)) else LAION_H14
    return ClipReward("pickscore", model, clip_tokenizer(processor),
                      hf_preprocess(processor, model.config.vision_config.image_size),
                      pickscore_head(model.logit_scale))


def _hps(version: str):
    def factory(source, device, dtype):
        from .open_clip_convert import VIT_H_14, clip_model as open_clip_model

        path = Path(source) if source and Path(source).exists() else Path(_hub_file(source or HPS_REPO,
                                                                                     HPS_FILES[version]))
        if path.is_dir():
            path = path / HPS_FILES[version]
        ckpt = read_state_dict(path)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise StablenoiseError(f"{path}: not an HPSv2 checkpoint (no state dict)")
        cfg_file = path.parent / "open_clip_config.json"  # open_clip's own name for it on the hub
        cfg = json.loads(cfg_file.read_text()).get("model_cfg", VIT_H_14) if cfg_file.is_file() else VIT_H_14
        model = _place(open_clip_model(state, cfg, source=str(path)), device, dtype)
        tokenizer = clip_tokenizer(str(path.parent) if has_tokenizer(path.parent) else LAION_H14)
        return ClipReward(version, model, tokenizer, Preprocess(model.config.vision_config.image_size, "pad"),
                          hps_head, max_length=model.config.text_config.max_position_embeddings)
    return factory


def imagereward(source, device, dtype):
    """``ImageReward.pt`` (a file, a folder holding it, or the hub repo) with the ``med_config.json`` and,
    for offline use, the BERT tokenizer files beside it; otherwise both come from the hub."""
    from transformers import AutoTokenizer

    from .imagereward import build, read_checkpoint, read_med_config

    if source and Path(source).is_dir():
        path = Path(source) / "ImageReward.pt"
    elif source and Path(source).is_file():
        path = Path(source)
    else:
        path = Path(_hub_file(source or IMAGEREWARD_REPO, "ImageReward.pt"))
    state = read_checkpoint(path)
    med = path.parent / "med_config.json"
    med = med if med.is_file() else Path(_hub_file(IMAGEREWARD_REPO, "med_config.json"))
    if has_tokenizer(path.parent) or (path.parent / "vocab.txt").is_file():
        tokenizer = from_pretrained(AutoTokenizer, str(path.parent), f"a BERT tokenizer from {str(path.parent)!r}")
    else:
        tokenizer = from_pretrained(AutoTokenizer, BERT, f"a BERT tokenizer from {BERT!r}")
        # BLIP adds [DEC] and [ENC] (ids 30522, 30523); prompts never hold them, but the vocab size must match.
        tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    return build(path, state, read_med_config(med), tokenizer, device, dtype)


def _aesthetic_file() -> str:
    target = Path(torch.hub.get_dir()) / "stablenoise" / AESTHETIC_FILE
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(AESTHETIC_URL, str(target), progress=False)
        except Exception as e:
            raise StablenoiseError(f"could not download {AESTHETIC_URL}: {e} (download it yourself and pass its path)")
    return str(target)


def aesthetic(source, device, dtype):
    """The head's .pth; the CLIP is ViT-L/14 from the hub, or the CLIP folder beside the .pth."""
    path = Path(source) if source else Path(_aesthetic_file())
    if path.is_dir():
        path = path / AESTHETIC_FILE
    state = read_state_dict(path)
    require_keys(state, [f"layers.{i}.weight" for i in AestheticHead.LINEAR], "LAION aesthetic MLP", path)
    head = AestheticHead(state)
    clip_source = str(path.parent) if (path.parent / "config.json").is_file() else CLIP_L14
    model = clip_model(clip_source, device, dtype)
    if model.config.projection_dim != head.in_features:
        raise StablenoiseError(f"{path}: aesthetic head takes {head.in_features}-d embeddings but the CLIP "
                               f"({clip_source}) gives {model.config.projection_dim}-d")
    head = head.to(device)
    # OpenAI's clip package preprocesses with torchvision: centre crop at round((H - size) / 2).
    return ClipReward("aesthetic", model, None, Preprocess(model.config.vision_config.image_size, "crop", "round"),
                      head, needs_prompts=False)


register("clipscore", clipscore, description="CLIPScore (torchmetrics): 100 * max(cos, 0), openai CLIP ViT-L/14",
         hub_ids=(CLIP_L14,), aliases=("clip",))
register("clipscore-views", clipscore_views, description="CLIPScore averaged over the views of a turntable strip "
         "(3D: Shap-E's decode)", aliases=("clip-views",))
register("pickscore", pickscore, description="PickScore v1: logit_scale * cos", hub_ids=(PICKSCORE,))
register("hpsv2", _hps("hpsv2"), description="HPS v2.0: 100 * cos", file_names=(HPS_FILES["hpsv2"],),
         hub_ids=(HPS_REPO,), aliases=("hpsv2.0", "hps"))
register("hpsv2.1", _hps("hpsv2.1"), description="HPS v2.1: 100 * cos", file_names=(HPS_FILES["hpsv2.1"],),
         hub_ids=(HPS_REPO,))
register("imagereward", imagereward, description="ImageReward v1.0: standardized (mean 0, std 1 on its data)",
         hub_ids=(IMAGEREWARD_REPO,), file_names=("ImageReward.pt",), aliases=("image-reward",))
register("aesthetic", aesthetic, description="LAION aesthetic predictor v1 (sac+logos+ava1 linear MSE), ~1-10",
         file_names=(AESTHETIC_FILE,), aliases=("laion-aesthetic",))
