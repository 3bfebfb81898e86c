"""ADMPFF-Net: embedding contract, stripe partitions, parameter sharing per scheme, gradient flow."""
import pytest
import torch

from admpff.training.model import (ADMPFFNet, ModelConfig, ModelConfigError, PretrainedWeightsError,
                                   StripeHead, stripe_rows)

torch.set_num_threads(2)


def small(**kw):
    """A ResNet-18 variant at 96x48 (6x3 map): same structure, fast enough for unit tests."""
    cfg = dict(num_classes=4, backbone="resnet18", height=96, width=48, dim=16, en_rows=1)
    cfg.update(kw)
    torch.manual_seed(0)
    return ADMPFFNet(ModelConfig(**cfg))


@pytest.fixture(scope="module")
def paper_model():
    torch.manual_seed(0)
    return ADMPFFNet(ModelConfig(num_classes=8)).eval()


def test_embedding_shape_and_unit_norm_at_288x144(paper_model):
    x = torch.randn(3, 3, 288, 144)
    with torch.no_grad():
        emb = paper_model(x, torch.tensor([0, 1, 0]))
    assert emb.shape == (3, 5120)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    layout = paper_model.embedding_layout()
    assert [s.name for s in layout] == ["p3.0", "p3.1", "p3.2"] + [f"p6.{i}" for i in range(6)] + ["en"]
    assert paper_model.contract().embedding_dim == 5120


def test_mixed_modality_batch_equals_single_modality_calls(paper_model):
    x = torch.randn(4, 3, 288, 144)
    mod = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        mixed = paper_model(x, mod)
        vis = paper_model(x[[1, 2]], torch.tensor([0, 0]))
        ir = paper_model(x[[0, 3]], torch.tensor([1, 1]))
    assert torch.allclose(mixed[[1, 2]], vis, atol=1e-5)
    assert torch.allclose(mixed[[0, 3]], ir, atol=1e-5)


def changed_stripes(head: StripeHead, rows: list[int]) -> list[int]:
    """Which stripes of ``head`` change when only the given feature-map rows change."""
    torch.manual_seed(1)
    fmap = torch.rand(2, 8, 18, 9)
    head.eval()
    base = head.stripe_features(fmap)
    edited = fmap.clone()
    edited[:, :, rows, :] += 5.0
    after = head.stripe_features(edited)
    return [i for i, (a, b) in enumerate(zip(base, after)) if not torch.allclose(a, b)]


@pytest.mark.parametrize("slicing,branch,expect", [
    # pose (pIS): head rows 0-2, torso 3-8, legs 9-17 (1:2:3 of 18)
    ("pose", "p3", {0: [0], 2: [0], 3: [1], 8: [1], 9: [2], 17: [2]}),
    ("equal", "p3", {0: [0], 5: [0], 6: [1], 11: [1], 12: [2], 17: [2]}),
    ("pose", "p6", {0: [0], 2: [0], 3: [1], 8: [2], 9: [3], 14: [4], 15: [5], 17: [5]}),
    ("pose", "en", {0: [], 14: [], 15: [0], 17: [0]}),
])
def test_stripe_partitions_by_behaviour(slicing, branch, expect):
    head = StripeHead(stripe_rows(18, branch, slicing, en_rows=3), in_channels=8, dim=4, num_classes=3)
    for row, stripes in expect.items():
        assert changed_stripes(head, [row]) == stripes, (slicing, branch, row)


def test_en_rows_configurable():
    assert stripe_rows(18, "en", en_rows=6) == [(12, 18)]
    head = StripeHead(stripe_rows(18, "en", en_rows=6), 8, 4, 3)
    assert changed_stripes(head, [12]) == [0] and changed_stripes(head, [11]) == []


@pytest.mark.parametrize("size", [(256, 128), (288, 100), (200, 144)])
def test_invalid_input_size_names_valid_sizes(size):
    with pytest.raises(ModelConfigError, match="multiple of 96"):
        ADMPFFNet(ModelConfig(num_classes=2, backbone="resnet18", height=size[0], width=size[1]))


def test_wrong_runtime_size_is_a_clear_error():
    model = small().eval()
    with pytest.raises(ModelConfigError, match="built for 96x48"):
        model(torch.randn(1, 3, 192, 48), torch.tensor([0]))


def test_missing_imagenet_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedWeightsError, match="no model hub is reachable"):
        small(pretrained="imagenet")
    with pytest.raises(PretrainedWeightsError, match="not found"):
        small(pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_weights_load_into_every_copy(tmp_path):
    import torchvision
    torch.manual_seed(3)
    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = small(pretrained=str(path))
    w = ref.layer3[0].conv1.weight
    for name in ("p3", "p6", "en"):  # scheme 3: layer3 is the first stage of every branch copy
        assert torch.equal(model.branches[name][0][0].conv1.weight, w)
    assert torch.equal(model.visible_stem[0][0].weight, ref.conv1.weight)
    assert torch.equal(model.infrared_stem[0][0].weight, ref.conv1.weight)


def blocks(seq) -> int:
    """Residual blocks in a module (stage0 has none)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    return sum(isinstance(m, (BasicBlock, Bottleneck)) for m in seq.modules())


# ResNet-18 has 2 blocks per stage: (stem blocks, shared blocks, per-branch blocks) of Table 1.
@pytest.mark.parametrize("scheme,layout", [(1, (0, 6, 2)), (2, (2, 4, 2)), (3, (0, 4, 4)), (4, (0, 2, 6))])
def test_parameter_sharing_per_scheme(scheme, layout):
    model = small(scheme=scheme)
    assert (blocks(model.visible_stem), blocks(model.shared), blocks(model.branches["p3"])) == layout
    assert blocks(model.infrared_stem) == layout[0]
    # per-modality stems and per-branch copies are distinct tensors, the shared trunk is one
    ptrs = lambda m: {p.data_ptr() for p in m.parameters()}
    assert not ptrs(model.visible_stem) & ptrs(model.infrared_stem)
    assert not ptrs(model.branches["p3"]) & ptrs(model.branches["p6"])
    assert not ptrs(model.branches["p6"]) & ptrs(model.branches["en"])
    # copies start from the same weights
    for a, b in zip(model.branches["p3"].parameters(), model.branches["en"].parameters()):
        assert torch.equal(a, b)


def test_parameter_roles_by_behaviour():
    """Perturbing a part changes exactly the outputs that part should feed."""
    model = small().eval()
    x = torch.randn(2, 3, 96, 48)
    vis, ir = torch.tensor([0, 0]), torch.tensor([1, 1])
    layout = {s.name: slice(s.offset, s.offset + s.size) for s in model.embedding_layout()}

    def outputs():
        with torch.no_grad():
            return model(x, vis), model(x, ir)

    def perturb(module):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))

    v0, i0 = outputs()
    perturb(model.visible_stem)
    v1, i1 = outputs()
    assert not torch.allclose(v0, v1) and torch.allclose(i0, i1)
    perturb(model.shared)
    v2, i2 = outputs()
    assert not torch.allclose(v1, v2) and not torch.allclose(i1, i2)
    perturb(model.branches["p6"])
    v3, _ = outputs()
    # the whole vector is renormalised, so compare each stripe's direction
    unit = lambda t: torch.nn.functional.normalize(t, dim=1)
    changed = [n for n, s in layout.items() if not torch.allclose(unit(v2[:, s]), unit(v3[:, s]), atol=1e-5)]
    assert changed == [f"p6.{i}" for i in range(6)]


def test_gradients_reach_stems_shared_and_all_branches():
    from admpff.training.losses import MGJLoss
    model = small().train()
    torch.manual_seed(0)
    xv, xi = torch.randn(4, 3, 96, 48), torch.randn(4, 3, 96, 48)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modality = torch.tensor([0] * 4 + [1] * 4)
    total, _ = MGJLoss()(model(xv, xi), labels, modality)
    total.backward()
    parts = {"visible_stem": model.visible_stem, "infrared_stem": model.infrared_stem, "shared": model.shared,
             **{f"branch {b}": model.branches[b] for b in ("p3", "p6", "en")},
             **{f"head {b}": model.heads[b] for b in ("p3", "p6", "en")}}
    for name, module in parts.items():
        grad = sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)
        assert grad > 0, f"no gradient reaches {name}"


def test_training_output_names_and_sizes():
    model = small().train()
    out = model(torch.randn(2, 3, 96, 48), torch.randn(2, 3, 96, 48))
    f = out["features"]
    assert set(f) == {"p3.0", "p3.1", "p3.2", "p3.all", *(f"p6.{i}" for i in range(6)), "p6.all", "en"}
    assert f["p3.all"].shape == (4, 48) and f["p6.all"].shape == (4, 96) and f["en"].shape == (4, 16)
    assert all(out["logits"][n].shape == (4, 4) for n in f)
