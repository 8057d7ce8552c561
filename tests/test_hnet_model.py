"""H-Net / dnaHNet modules against simple references (../shared/reference/focus-hnet.md section 5.1), CPU, fp32."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from nucleotron.configs.loader import load_config
from nucleotron.model.hnet import HNetLM, parameter_groups, parse_stack, stage_layouts
from nucleotron.model.hnet.dc import (RouterOutput, RoutingModule, chunk, chunk_packed, confidence_ste, dechunk,
                                      dechunk_packed, ema, ratio_loss)
from nucleotron.model.hnet.ssd import ssd_reference

DEVICE = torch.device("cpu")  # the pure-PyTorch paths under test (the Triton kernels are GPU-only and optional)


def tiny_cfg(*overrides):
    return load_config("configs/models/dnahnet-tiny.yaml", list(overrides)).model.hnet


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return HNetLM(tiny_cfg(), vocab_size=8).eval()


# ------------------------------------------------------------------------------------------ layout DSL


def test_layout_dsl_parses_official_layouts_and_names_bad_input():
    blocks = parse_stack("T1m4")
    assert [(b.mixer, b.mlp) for b in blocks] == [("attention", True)] + [("mamba2", False)] * 4
    assert stage_layouts(["m4", ["T1m4", ["T9"], "m4T1"], "m4"]) == [("m4", "m4"), ("T1m4", "m4T1"), ("T9",)]
    with pytest.raises(ValueError, match=r"model\.hnet\.layout\[1\]\[0\]: 'x2' is not a block stack"):
        stage_layouts(["m4", ["x2", ["T9"], "m4"], "m4"])
    with pytest.raises(ValueError, match=r"expected \[encoder, \[inner\.\.\.\], decoder\] or \[main\]"):
        stage_layouts(["m4", ["T9"]])


# ------------------------------------------------------------------------------------------ 1. router


def test_router_invariants():
    torch.manual_seed(1)
    router = RoutingModule(16)
    assert torch.equal(router.q_proj_layer.weight, torch.eye(16)) and torch.equal(router.k_proj_layer.weight, torch.eye(16))
    x = torch.randn(3, 20, 16)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 12:] = False
    out = router(x, mask)
    assert ((out.prob >= 0) & (out.prob <= 1)).all()
    assert (out.prob[:, 0] == 1).all()
    assert torch.equal(out.boundary, (out.prob > 0.5) & mask)
    assert not out.boundary[1, 12:].any()
    assert torch.allclose(out.confidence, torch.maximum(out.prob, 1 - out.prob))
    # identity projections and a repeated vector: no boundary after the first position
    same = router(torch.randn(1, 1, 16).expand(1, 10, 16), torch.ones(1, 10, dtype=torch.bool))
    assert same.prob[0, 0] == 1 and same.prob[0, 1:].abs().max() < 1e-6
    # packed: every sequence start is a boundary with p = 1
    cu = torch.tensor([0, 7, 20, 32])
    packed = router.forward_packed(torch.randn(32, 16), cu)
    assert (packed.prob[cu[:-1]] == 1).all() and packed.boundary[cu[:-1]].all()


# ------------------------------------------------------------------------------------------ 2. chunk / dechunk


def naive_chunk_dechunk(x, z_of, boundary, prob):
    """Per sample: the boundary rows, then output_t = EMA value of the last chunk started at or before t."""
    out = torch.zeros_like(x)
    chunks = []
    for i in range(x.shape[0]):
        rows = [t for t in range(x.shape[1]) if boundary[i, t]]
        chunks.append(x[i, rows])
        z = z_of(x[i, rows])
        last, smoothed = torch.zeros(x.shape[-1]), []
        for j, t in enumerate(rows):
            p = prob[i, t].clamp(1e-4, 1 - 1e-4)
            last = p * z[j] + (1 - p) * last
            smoothed.append(last)
        current = -1
        for t in range(x.shape[1]):
            current += int(boundary[i, t])
            out[i, t] = smoothed[current]
    return chunks, out


def test_chunk_dechunk_match_a_naive_loop_and_packed_mode():
    torch.manual_seed(2)
    b, l, d = 3, 23, 8
    x = torch.randn(b, l, d)
    prob = torch.rand(b, l)
    boundary = prob > 0.5
    boundary[:, 0] = True
    boundary[1, :] = False
    boundary[1, 0] = True  # a sample with a single chunk
    z_of = torch.tanh  # stands in for the main network (row-wise, so padding rows cannot leak)
    chunks, expected = naive_chunk_dechunk(x, z_of, boundary, prob)

    padded, inner_mask = chunk(x, boundary)
    for i in range(b):
        n = int(boundary[i].sum())
        assert torch.equal(padded[i, :n], chunks[i]) and inner_mask[i].sum() == n
    got = dechunk(z_of(padded), boundary, prob, chunk_size=4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    cu = torch.arange(b + 1) * l
    flat, chunk_cu = chunk_packed(x.reshape(b * l, d), boundary.reshape(-1), cu)
    assert torch.equal(flat, torch.cat(chunks)) and chunk_cu.tolist() == [0, *torch.cumsum(boundary.sum(1), 0).tolist()]
    packed = dechunk_packed(z_of(flat), boundary.reshape(-1), prob.reshape(-1), chunk_cu, chunk_size=4)
    torch.testing.assert_close(packed.reshape(b, l, d), got, atol=1e-6, rtol=1e-6)

    # every position a boundary with p -> 1: dechunk(chunk(x)) = x (up to the 1e-4 clamp)
    every = torch.ones(b, l, dtype=torch.bool)
    back = dechunk(chunk(x, every)[0], every, torch.ones(b, l), chunk_size=4)
    torch.testing.assert_close(back, x, atol=1e-3, rtol=1e-3)


# ------------------------------------------------------------------------------------------ 3. EMA / SSD


def test_ema_as_ssd_scan_equals_the_recurrence():
    torch.manual_seed(3)
    z, p = torch.randn(2, 37, 6), torch.rand(2, 37)
    last, loop = torch.zeros(2, 6), []
    for j in range(37):
        q = p[:, j:j + 1].clamp(1e-4, 1 - 1e-4)
        last = q * z[:, j] + (1 - q) * last
        loop.append(last)
    torch.testing.assert_close(ema(z, p, chunk_size=8), torch.stack(loop, 1), atol=1e-5, rtol=1e-5)


def test_chunked_ssd_equals_the_sequential_recurrence():
    torch.manual_seed(4)
    b, l, h, p, g, n = 2, 19, 4, 3, 2, 5
    x, dt = torch.randn(b, l, h, p), F.softplus(torch.randn(b, l, h))
    A, B, C = -torch.rand(h) * 2, torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    y, final = ssd_reference(x, dt, A, B, C, chunk_size=4)
    state, ys = torch.zeros(b, h, p, n), []
    Bh, Ch = B.repeat_interleave(h // g, 2), C.repeat_interleave(h // g, 2)
    for t in range(l):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        state = decay * state + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    torch.testing.assert_close(y, torch.stack(ys, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, state, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ 4. STE


def test_confidence_ste_is_one_forward_and_identity_backward(tiny_model):
    c = torch.rand(2, 9, requires_grad=True)
    zbar = torch.randn(2, 9, 4)
    out = zbar * confidence_ste(c).unsqueeze(-1)
    assert torch.equal(out, zbar)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    torch.testing.assert_close(c.grad, (grad_out * zbar).sum(-1))

    model = copy.deepcopy(tiny_model).train()
    tokens = torch.randint(0, 4, (2, 48))
    F.cross_entropy(model(tokens).logits.flatten(0, 1), tokens.flatten()).backward()
    for stage in model.stages()[:-1]:
        for weight in (stage.routing_module.q_proj_layer.weight, stage.routing_module.k_proj_layer.weight):
            assert weight.grad is not None and weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ 5. ratio loss


def router_with(selected: float, mean_prob: float, n: int = 60) -> RouterOutput:
    k = round(selected * n)
    boundary = torch.zeros(1, n, dtype=torch.bool)
    boundary[0, :k] = True
    prob = torch.full((1, n), mean_prob, requires_grad=True)
    return RouterOutput(prob=prob, boundary=boundary, confidence=prob, mask=torch.ones_like(boundary))


@pytest.mark.parametrize("target", [2.0, 3.0])
def test_ratio_loss_value_and_gradient_sign(target):
    at_target = router_with(1 / target, 1 / target)
    assert ratio_loss(at_target, target).item() == pytest.approx(1.0, abs=1e-6)
    for selected in (0.1, 0.9):  # F below and above 1/N
        r = router_with(selected, 0.4)
        ratio_loss(r, target).backward()
        grad_g = r.prob.grad.sum().item()  # dL/dG (G is the mean, so the per-position grads sum to it)
        assert grad_g != 0 and (grad_g > 0) == (target * selected - 1 > 0)
        f = r.boundary.float().mean()
        expected = target / (target - 1) * ((target - 1) * f - (1 - f))
        assert grad_g == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------------------------------ 6-8. the model


def test_causality(tiny_model):
    torch.manual_seed(5)
    tokens = torch.randint(0, 4, (1, 64))
    with torch.no_grad():
        before = tiny_model(tokens).logits
        for t in (10, 40):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 4
            after = tiny_model(changed).logits
            torch.testing.assert_close(after[:, :t], before[:, :t], atol=1e-5, rtol=1e-5)
            assert not torch.allclose(after[:, t], before[:, t])


@pytest.mark.parametrize("ratios", [["3", "2"], ["2", "2"]])
def test_recursion_shapes_and_ragged_masks(ratios):
    torch.manual_seed(6)
    model = HNetLM(tiny_cfg(f"model.hnet.target_ratios=[{','.join(ratios)}]"), vocab_size=8).eval()
    seen = []
    hooks = [stage.main_network.register_forward_hook(lambda m, args, out: seen.append(args))
             for stage in model.stages()[:-1]]
    tokens = torch.randint(0, 4, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False  # a shorter sample, right-padded
    with torch.no_grad():
        out = model(tokens, mask)
    assert out.logits.shape == (3, 40, 8) and len(out.routers) == 2
    for router, (chunks, inner_mask) in zip(out.routers, seen):
        counts = router.boundary.sum(1)
        assert chunks.shape[1] == counts.max() and torch.equal(inner_mask.sum(1), counts)
        assert not (router.boundary & ~router.mask).any()
    assert torch.equal(out.routers[1].mask, seen[0][1])  # stage 2 sees stage 1's chunk mask
    for h in hooks:
        h.remove()
    with torch.no_grad():
        alone = model(tokens[1:2, :25]).logits
    torch.testing.assert_close(out.logits[1:2, :25], alone, atol=1e-5, rtol=1e-5)


def test_token_by_token_step_equals_full_forward(tiny_model):
    torch.manual_seed(7)
    tokens = torch.randint(0, 4, (1, 70))  # longer than the windows (63, 31) and than one SSD chunk (32)
    with torch.no_grad():
        full = tiny_model(tokens)
        state = tiny_model.empty_state()
        steps = [tiny_model.step(tokens[:, t:t + 1], state) for t in range(tokens.shape[1])]
    torch.testing.assert_close(torch.cat([s.logits for s in steps], 1), full.logits, atol=1e-4, rtol=1e-4)
    boundaries = torch.cat([s.routers[0].boundary for s in steps], 1)
    assert torch.equal(boundaries, full.routers[0].boundary)


def test_parameter_groups_carry_stage_lr_multipliers(tiny_model):
    groups = parameter_groups(tiny_model, weight_decay=0.05, lr_multipliers=[2.0, 1.5, 1.0])
    mult = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    inner = tiny_model.stages()[1]
    assert mult[id(tiny_model.embeddings.weight)] == 2.0 and mult[id(tiny_model.lm_head.weight)] == 2.0
    assert mult[id(tiny_model.backbone.encoder.layers[0].mixer.in_proj.weight)] == 2.0
    assert mult[id(inner.encoder.layers[0].mlp.fc1.weight)] == 1.5 and mult[id(inner.pad_dimension)] == 1.5
    assert mult[id(inner.main_network.main_network.layers[0].mixer.Wqkv.weight)] == 1.0
    assert decay[id(inner.encoder.layers[0].norm.weight)] == 0.0
    assert decay[id(tiny_model.backbone.encoder.layers[0].mixer.A_log)] == 0.0
    assert decay[id(tiny_model.backbone.encoder.layers[0].mixer.in_proj.weight)] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(list(tiny_model.parameters()))


def test_initialisation():
    model = HNetLM(tiny_cfg(), vocab_size=8)
    for stage in model.stages()[:-1]:
        assert torch.equal(stage.routing_module.q_proj_layer.weight, torch.eye(stage.d_model))
        assert (stage.residual_proj.weight == 0).all() and stage.residual_proj.weight.dtype == torch.float32
    assert model.stages()[1].pad_dimension.shape == (16,) and (model.stages()[1].pad_dimension == 0).all()
