"""Encoder registry, resnet50-trunc weight loading, timm hint, and what stain-stats measures."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from pathgen.features import ENCODERS, get_encoder, list_encoders
from pathgen.features.resnet import Bottleneck, ResNet50Trunc, _layer
from pathgen.features.stain_stats import FEATURE_NAMES, RGB_FROM_HED, euler_number, rgb_to_hed
from tests.slides.synthetic import he_image


def test_registry_names_and_errors():
    assert {"resnet50-trunc", "stain-stats"} <= set(ENCODERS)
    assert "timm:<model>" in list_encoders()
    with pytest.raises(ValueError, match="unknown encoder 'vgg'"):
        get_encoder("vgg")
    with pytest.raises(ValueError, match="--weights"):
        get_encoder("resnet50-trunc")  # no silent random ImageNet stand-in
    with pytest.raises(ValueError, match="no weights"):
        get_encoder("stain-stats", weights="x.pth")
    assert get_encoder("stain_stats").name == "stain-stats"  # CLAM-style alias


def test_timm_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ImportError, match="pip install timm"):
        get_encoder("timm:vit_small_patch16_224")


class _FakeTimm:
    """A stand-in for the timm package (not a dependency): ``create_model`` builds a small network whose
    pooled output is wider than its ``num_features``, as MobileNetV3's pre-logits layer is."""

    class data:  # noqa: N801 - mirrors timm.data
        @staticmethod
        def resolve_model_data_config(model):
            return {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}  # timm's untrained cfg

    @staticmethod
    def create_model(name, pretrained=False, num_classes=None, **kwargs):
        if name != "tiny" or set(kwargs) - {"width"}:
            raise TypeError(f"unexpected model or arguments {name} {kwargs}")
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, kwargs.get("width", 6)))
        net.num_features = 4  # what timm reports; the real output is width 6
        return net


def test_timm_encoder_weights_constants_and_width(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", _FakeTimm)
    with pytest.raises(ValueError, match="needs its weights"):
        get_encoder("timm:tiny")  # no silent untrained network
    enc = get_encoder("timm:tiny", weights="random")
    assert enc.out_dim == 6 and enc.encode(torch.zeros(2, 3, 40, 40, dtype=torch.uint8)).shape == (2, 6)
    # ImageNet constants by default (timm's config describes the untrained net, not the checkpoint)
    assert enc.mean == (0.485, 0.456, 0.406) and enc.std == (0.229, 0.224, 0.225)
    assert enc.config()["weights"] == "random"
    enc = get_encoder("timm:tiny", weights="random", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                      model_kwargs={"width": 3})
    assert enc.out_dim == 3 and enc.config()["mean"] == [0.5] * 3 and enc.config()["model_kwargs"] == {"width": 3}
    with pytest.raises(ValueError, match="cannot build 'tiny'.*--model-kwargs"):
        get_encoder("timm:tiny", weights="random", model_kwargs={"bogus": 1})
    sd = get_encoder("timm:tiny", weights="random").model.state_dict()
    torch.save(sd, tmp_path / "ok.pt")
    assert get_encoder("timm:tiny", weights=tmp_path / "ok.pt").weights == str((tmp_path / "ok.pt").resolve())
    sd["0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="shape.pt: its tensors do not fit"):
        get_encoder("timm:tiny", weights=tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="takes no model_kwargs"):
        get_encoder("stain-stats", model_kwargs={"width": 3})


@pytest.mark.parametrize("content", ["junk", "module", "truncated", "shapes"])
def test_bad_weights_files_name_the_file_and_the_fix(tmp_path, content):
    p = tmp_path / f"{content}.pth"
    if content == "junk":
        p.write_bytes(b"\x00not a checkpoint" * 10)
    elif content == "module":
        torch.save(nn.Linear(2, 2), p)  # a whole pickled model
    elif content == "truncated":
        torch.save(ResNet50Trunc().state_dict(), tmp_path / "full.pth")
        p.write_bytes((tmp_path / "full.pth").read_bytes()[:100_000])
    else:
        sd = ResNet50Trunc().state_dict()
        sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
        torch.save(sd, p)
    with pytest.raises(ValueError, match="fix: ") as e:
        get_encoder("resnet50-trunc", weights=p)
    assert str(p) in str(e.value)


class _TorchvisionResNet50(nn.Module):
    """The full torchvision ResNet-50 layout (layer4 + fc) to produce a checkpoint with torchvision's keys."""

    def __init__(self):
        super().__init__()
        t = ResNet50Trunc()
        self.conv1, self.bn1, self.relu, self.maxpool = t.conv1, t.bn1, t.relu, t.maxpool
        self.layer1, self.layer2, self.layer3 = t.layer1, t.layer2, t.layer3
        self.layer4 = _layer(1024, 512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, 1000)


def test_resnet50_trunc_has_torchvision_keys_and_shapes():
    sd = ResNet50Trunc().state_dict()
    # layout of torchvision.models.resnet50 (v1.5), minus layer4 and fc
    expect = {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,), "bn1.num_batches_tracked": (),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.downsample.1.weight": (256,),
        "layer1.2.conv3.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3), "layer2.0.downsample.0.weight": (512, 256, 1, 1),
        "layer2.3.bn2.bias": (128,),
        "layer3.0.conv1.weight": (256, 512, 1, 1), "layer3.5.conv3.weight": (1024, 256, 1, 1),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith(("layer4", "fc")) for k in sd)
    n_blocks = {f"layer{i}": len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in (1, 2, 3)}
    assert n_blocks == {"layer1": 3, "layer2": 4, "layer3": 6}
    # conv1 + bn1 (5 entries) + 13 blocks x 18 + 3 downsamples x 6; torchvision's full resnet50 has
    # 320 = 258 + layer4 (60) + fc (2)
    assert len(sd) == 6 + 13 * 18 + 3 * 6 == 258
    assert isinstance(ResNet50Trunc().layer2[0], Bottleneck) and ResNet50Trunc().layer2[0].conv2.stride == (2, 2)


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    """A random-init checkpoint with exactly torchvision's resnet50 keys (layer4 and fc included)."""
    torch.manual_seed(1)
    full = _TorchvisionResNet50().eval()
    for m in full.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(full.state_dict(), path)
    return full, path


def test_resnet50_trunc_loads_a_torchvision_checkpoint(torchvision_checkpoint):
    full, path = torchvision_checkpoint
    enc = get_encoder("resnet50-trunc", weights=path)
    assert enc.out_dim == 1024 and enc.input_size == 224 and len(enc.config()["weights_sha256"]) == 64
    x = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8)
    got = enc.encode(x)  # resized to 224, ImageNet-normalised
    # the reference input is built by hand (torchvision's Resize(224) + ToTensor + ImageNet Normalize),
    # not with enc.preprocess, so wrong constants or a wrong resize would show
    ref = torch.nn.functional.interpolate(x.float(), size=(224, 224), mode="bilinear", align_corners=False,
                                          antialias=True).clamp(0, 255) / 255.0
    ref = (ref - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        h = full.maxpool(full.relu(full.bn1(full.conv1(ref))))
        want = full.avgpool(full.layer3(full.layer2(full.layer1(h)))).flatten(1)
    assert got.shape == (1, 1024) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    small = torch.randn(1, 3, 64, 64)
    fresh = get_encoder("resnet50-trunc", weights="random")
    assert fresh.config()["weights"] == "random"
    with torch.no_grad():
        assert not torch.allclose(fresh(small), enc(small))


def test_resnet50_trunc_loads_wrapped_checkpoints(torchvision_checkpoint, tmp_path):
    full, _ = torchvision_checkpoint
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.state_dict().items()}}, path)  # DataParallel style
    enc = get_encoder("resnet50-trunc", weights=path)
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, full.state_dict()[k], rtol=0, atol=0)


def test_resnet50_trunc_rejects_a_wrong_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a torchvision-style ResNet-50"):
        get_encoder("resnet50-trunc", weights=path)


# ---------------------------------------------------------------- stain-stats
def _patch(**kw) -> torch.Tensor:  # [1, 3, 256, 256] uint8
    return torch.from_numpy(he_image(256, 256, tissue="full", noise=2.0, **kw)).permute(2, 0, 1)[None]


def _feats(x: torch.Tensor) -> dict[str, float]:
    enc = get_encoder("stain-stats")
    return dict(zip(FEATURE_NAMES, enc.encode(x)[0].tolist()))


def test_stain_stats_shape_determinism_and_batch_independence():
    enc = get_encoder("stain-stats")
    assert enc.out_dim == len(FEATURE_NAMES) == 46 and len(set(FEATURE_NAMES)) == 46
    x = torch.cat([_patch(seed=s) for s in range(3)] + [torch.full((1, 3, 256, 256), 255, dtype=torch.uint8),
                                                        torch.zeros(1, 3, 256, 256, dtype=torch.uint8)])
    a, b = enc.encode(x), enc.encode(x)
    assert a.shape == (5, 46) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(enc.encode(x[1:2]), a[1:2])  # independent of the rest of the batch
    assert enc.encode(x[:, :, :224, :224]).shape == (5, 46)  # 224 patches are resized to 256


def test_colour_deconvolution_recovers_pure_stains():
    m = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
    for stain, c in ((0, 0.6), (1, 0.4)):
        od = c * m[stain]  # optical density of a pure stain at concentration c
        rgb = (256 * 10 ** (-od) - 1) / 255
        hed = rgb_to_hed(rgb.float().view(1, 3, 1, 1)).view(3)
        assert hed[stain] == pytest.approx(c, abs=0.01)
        assert hed[1 - stain] == pytest.approx(0, abs=0.01) and hed[2] == pytest.approx(0, abs=0.01)


def test_euler_number_counts_blobs():
    m = torch.zeros(1, 1, 40, 40, dtype=torch.bool)
    m[0, 0, 2:6, 2:6] = True
    m[0, 0, 10:20, 10:20] = True
    m[0, 0, 30, 30] = True
    assert euler_number(m).item() == 3
    m[0, 0, 14:16, 14:16] = False  # a hole: blobs - holes
    assert euler_number(m).item() == 2


def test_stain_stats_tracks_nuclear_density():
    lo, hi = _feats(_patch(nuclei_per_1e4px=2, radius=5)), _feats(_patch(nuclei_per_1e4px=8, radius=5))
    assert hi["nuclei_per_1e4px"] > 1.5 * lo["nuclei_per_1e4px"]
    assert hi["nuclear_fraction"] > 2 * lo["nuclear_fraction"]
    assert hi["h_mean"] > lo["h_mean"] and hi["log_h_over_e"] > lo["log_h_over_e"]
    # the blob count is close to the true number of nuclei (2 per 1e4 px, few overlaps)
    assert 1.2 < lo["nuclei_per_1e4px"] < 2.4


def test_stain_stats_tracks_nucleus_size():
    small, big = _feats(_patch(nuclei_per_1e4px=3, radius=3.5)), _feats(_patch(nuclei_per_1e4px=3, radius=7))
    assert big["nucleus_radius_px"] > 1.5 * small["nucleus_radius_px"]
    assert big["nucleus_radius_px"] == pytest.approx(7, rel=0.3)  # smoothing and overlaps widen it a little
    # coarser structures move texture energy from fine to coarse bands
    assert (big["band4_h"] - big["band1_h"]) > (small["band4_h"] - small["band1_h"])


def test_stain_stats_tracks_stain_intensity():
    base = he_image(256, 256, tissue="full", noise=2.0, nuclei_per_1e4px=4).astype(np.float64)
    od = -np.log10((base + 1) / 256)
    light = 256 * 10 ** (-0.5 * od) - 1  # same picture, half of every stain (Beer-Lambert)
    def to_x(a):
        return torch.from_numpy(np.clip(np.round(a), 0, 255).astype(np.uint8)).permute(2, 0, 1)[None]

    f_base, f_light = _feats(to_x(base)), _feats(to_x(light))
    assert f_base["h_mean"] == pytest.approx(2 * f_light["h_mean"], rel=0.15)
    assert f_base["e_mean"] == pytest.approx(2 * f_light["e_mean"], rel=0.15)
    assert f_base["od_mean"] > f_light["od_mean"]
    assert f_base["tissue_fraction"] > 0.9


def test_stain_stats_tracks_texture_scale():
    rng = np.random.default_rng(0)
    fine = rng.normal(0, 1, (256, 256))
    coarse = np.kron(rng.normal(0, 1, (32, 32)), np.ones((8, 8)))

    def to_x(tex):
        img = np.stack([200 + 30 * tex, 150 + 30 * tex, 190 + 30 * tex], axis=-1)
        return torch.from_numpy(np.clip(img, 0, 255).astype(np.uint8)).permute(2, 0, 1)[None]

    f, c = _feats(to_x(fine)), _feats(to_x(coarse))
    assert f["band1_gray"] > c["band1_gray"] + 0.5
    assert c["band8_gray"] > f["band8_gray"] + 0.5
    assert c["local_var64_gray"] > c["local_var4_gray"] and f["local_var4_gray"] > f["local_var64_gray"] - 0.1
