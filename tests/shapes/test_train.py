import pytest
import torch
from safetensors.torch import load_file

from stablenoise.shapes import train as train_mod
from stablenoise.shapes.train import TrainConfig, train


def _weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_resume_reproduces_an_uninterrupted_run(tmp_path, monkeypatch):
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, warmup=1)
    straight = train(tmp_path / "a", cfg, progress=False)
    log = (straight / "train_log.json").read_text()
    assert (straight / "loss.png").exists() and '"losses"' in log

    real_batch = train_mod.batch

    def interrupt_at_3(c, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_batch(c, step)

    monkeypatch.setattr(train_mod, "batch", interrupt_at_3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", cfg, progress=False)
    assert (tmp_path / "b" / "checkpoint" / "state.pt").exists() and not (tmp_path / "b" / "model").exists()
    monkeypatch.setattr(train_mod, "batch", real_batch)
    resumed = train(tmp_path / "b", cfg, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k  # the same steps on the same batches and shapes: same sums


def test_worker_processes_draw_the_same_batches_as_inline():
    cfg = TrainConfig(batch_size=3, seed=5)
    inline = list(train_mod.batches(cfg, range(2, 12)))  # more steps than the 4 drawn ahead: the refill is used
    ahead = list(train_mod.batches(TrainConfig(batch_size=3, seed=5, workers=2), range(2, 12)))
    assert len(ahead) == len(inline) == 10
    for (xa, ca), (xb, cb) in zip(inline, ahead):
        assert ca == cb and torch.equal(xa, xb)
    assert not torch.equal(inline[0][0], inline[1][0])  # consecutive steps differ: the order is checked


def test_train_shapes_refuses_an_unavailable_device(tmp_path):
    from click.testing import CliRunner

    from stablenoise.cli import main

    r = CliRunner().invoke(main, ["train-shapes", "--out", str(tmp_path / "t"), "--steps", "1", "--device", "bogus"])
    assert r.exit_code != 0 and "unknown device 'bogus'" in r.output
    assert not (tmp_path / "t").exists()
