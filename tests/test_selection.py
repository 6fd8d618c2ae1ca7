import pytest
import torch

import stablenoise as sn
from stablenoise.errors import StablenoiseError


def test_ranks_agree_with_scores(sd):
    seen = []
    r = sn.select(sd, "a red cube", k=6, batch_size=4, steps=3, progress=False, callback=seen.append)
    assert r.seeds == list(range(6))
    assert [len(c["seeds"]) for c in seen] == [4, 2]
    direct = sn.stability(sd, "a red cube", sn.noises_from_seeds(range(6), sd.latent_shape), steps=3)
    assert torch.allclose(torch.tensor(r.scores), direct, atol=1e-5)
    assert r.best_seed == int(direct.argmax()) and r.worst_seed == int(direct.argmin())
    assert r.ranked()[0] == (r.best_seed, max(r.scores))
    assert torch.equal(r.best_noise, sn.noises_from_seeds([r.best_seed], sd.latent_shape))
    assert torch.equal(r.worst_noise, sn.noises_from_seeds([r.worst_seed], sd.latent_shape))
    assert r.best_seed != r.worst_seed


def test_explicit_seeds(sd):
    r = sn.select(sd, "a cat", seeds=[10, 3, 99], steps=2, progress=False)
    assert r.seeds == [10, 3, 99] and r.best_seed in r.seeds
    s = sn.stability(sd, "a cat", sn.noise_from_seed(99, sd.latent_shape), steps=2)
    assert abs(r.scores[2] - float(s)) < 1e-5


@pytest.mark.parametrize("kwargs, match", [({"k": 0}, "k must be"), ({"seeds": [1, 1]}, "distinct"),
                                           ({"k": 2, "batch_size": 0}, "batch size")])
def test_bad_selection(sd, kwargs, match):
    with pytest.raises(StablenoiseError, match=match):
        sn.select(sd, "a cat", steps=2, progress=False, **kwargs)
